"""Shards as Ray actors: the coordinator's :class:`Backend` on a Ray cluster (``up --backend ray``).

Each shard is one actor. The actor's worker process runs the same shard server as ``splitasr
shard`` (built from the same command line, :func:`shard_command`), which registers with the
coordinator and heartbeats as a local shard does. Placement:

- **zone**: the shard's zone must be a node label ``zone=<name>`` (``label_selector``); with
  ``zone_resources`` on, a custom resource ``zone:<name>`` instead (for clusters whose nodes
  carry no labels: start them with ``--resources '{"zone:a": 1000}'``);
- **resources**: the pool's per-stage requests (``stage_resources``, e.g. ``{dec: {GPU: 1}}``);
  CPUs default to the shard's ``threads``.

Ray does not restart the actors (``max_restarts=0``): a shard whose actor died (node lost, worker
killed) is restarted by this backend under the same shard id, on any node that fits, exactly as
the local backend restarts a crashed process. Needs the ``ray`` extra.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from splitasr.cloud.coordinator.backend import Backend, ShardHandle, new_shard_id
from splitasr.cloud.processes import ShardSpec, shard_args
from splitasr.shared.auth import SECRET_ENV, ensure_cluster_secret
from splitasr.shared.errors import ConfigError, ProcessStartError
from splitasr.shared.limits import Backoff

log = logging.getLogger(__name__)

ZONE_LABEL = "zone"


def connect(address: str | None, namespace: str):
    """The ``ray`` module, connected: to a running cluster (``auto`` or HOST:PORT), or to a private
    Ray started on loopback (None). Usage stats stay off unless the environment turns them on."""
    loopback = address is None or address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost")
    if loopback:  # Ray "resolves" 127.0.0.1 to the machine's outward address unless told (read on import)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray's usage report would leave the machine
    try:
        import ray
    except ImportError:
        raise ConfigError("the Ray backend needs the ray extra: pip install 'splitasr[ray]'") from None
    if not ray.is_initialized():
        local = {"_node_ip_address": "127.0.0.1"} if loopback else {}
        ray.init(address=address, namespace=namespace, include_dashboard=False, log_to_driver=False, **local)
    return ray


def init_worker(env: dict[str, str]) -> None:
    """Set up the Ray worker process of an actor: the environment it was given (the cluster
    secret, tokens), and logging to the worker's log files."""
    os.environ.update(env)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class ShardActor:
    """Runs one shard server in this Ray worker process (wrapped with ``ray.remote`` on first use)."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        init_worker(env)
        self.argv = argv
        self.stop_event: asyncio.Event | None = None
        self.task: asyncio.Task | None = None

    async def start(self, timeout_s: float) -> dict:
        """Load and warm the shard, then answer its ready file's content (url, pid) and node."""
        import ray

        from splitasr.cli.cluster import shard_config
        from splitasr.cli.main import build_parser
        from splitasr.cloud.shard.server import serve

        args = build_parser().parse_args(self.argv)
        if args.host == "node":  # listen on this node's address, for edges and shards on other machines
            args.host = ray.util.get_node_ip_address()
        ready = Path(tempfile.mkdtemp(prefix="splitasr-actor-")) / "ready.json"
        args.ready_file = str(ready)
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(serve(shard_config(args), self.stop_event))
        info = await until_ready(self.task, ready, timeout_s, "shard")
        return {**info, "node_id": ray.get_runtime_context().get_node_id()}

    async def wait(self) -> None:
        """Returns when the shard server ends by itself (drained, or orphaned by the coordinator)."""
        await self.task

    async def stop(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()
        if self.task is not None:
            await self.task


async def until_ready(task: asyncio.Task, ready: Path, timeout_s: float, what: str) -> dict:
    """The content of ``ready`` once the server ``task`` wrote it; what stopped the task if it ended
    first, :class:`ProcessStartError` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if task.done():
            task.result()  # raises what stopped it
            raise ProcessStartError(f"{what} returned before it was ready")
        if time.monotonic() > deadline:
            raise ProcessStartError(f"{what} not ready after {timeout_s} s")
        await asyncio.sleep(0.02)  # the server writes its ready file once it is up
    return json.loads(ready.read_text())


@dataclass
class _Actor:
    handle: ShardHandle
    actor: object
    watcher: asyncio.Task | None = None


class RayBackend(Backend):
    def __init__(
        self,
        coordinator_url: str,
        address: str | None = None,
        namespace: str = "splitasr",
        shard_host: str = "127.0.0.1",
        zone_resources: bool = False,
        stage_resources: dict[str, dict[str, dict[str, float]]] | None = None,
        ready_timeout_s: float = 180.0,
        restart_crashed: bool = True,
    ):
        ray = self.ray = connect(address, namespace)
        self.remote_actor = ray.remote(ShardActor)
        self.coordinator_url = coordinator_url
        self.shard_host = shard_host
        self.zone_resources = zone_resources
        self.stage_resources = stage_resources or {}  # model -> stage -> {resource: amount}
        self.ready_timeout_s = ready_timeout_s
        self.restart_crashed = restart_crashed
        self.workdir = Path(tempfile.mkdtemp(prefix="splitasr-ray-"))  # what `up` reports; shards log to Ray
        self._actors: dict[str, _Actor] = {}
        self._restarting: dict[str, ShardHandle] = {}  # lost shards between launch attempts
        self.exits: list[tuple[str, int]] = []

    def list(self) -> list[ShardHandle]:
        restarting = [h for sid, h in self._restarting.items() if sid not in self._actors]
        return [a.handle for a in self._actors.values()] + restarting

    def placement(self, spec: ShardSpec) -> dict:
        """Ray actor options of a shard: its zone and its stage's resources."""
        wanted = dict(self.stage_resources.get(spec.model, {}).get(spec.stage, {}))
        options: dict = {"num_cpus": wanted.pop("CPU", spec.threads), "max_restarts": 0}
        if "GPU" in wanted:
            options["num_gpus"] = wanted.pop("GPU")
        if spec.zone != "local":
            if self.zone_resources:
                wanted[f"zone:{spec.zone}"] = 0.001
            else:
                options["label_selector"] = {ZONE_LABEL: spec.zone}
        if wanted:
            options["resources"] = wanted
        return options

    async def start(self, spec: ShardSpec, shard_id: str | None = None) -> ShardHandle:
        return await self._launch(ShardHandle(shard_id or new_shard_id(spec), spec, started_at=time.monotonic()))

    async def _launch(self, handle: ShardHandle) -> ShardHandle:
        argv = shard_args(handle.spec, None, self.coordinator_url, handle.shard_id) + ["--host", self.shard_host]
        env = {SECRET_ENV: ensure_cluster_secret()}
        options = self.placement(handle.spec)
        actor = self.remote_actor.options(**options).remote(argv, env)
        handle.state, handle.started_at = "starting", time.monotonic()
        entry = _Actor(handle, actor)
        self._actors[handle.shard_id] = entry
        try:
            info = await asyncio.wait_for(actor.start.remote(self.ready_timeout_s), self.ready_timeout_s + 5)
        except (asyncio.TimeoutError, self.ray.exceptions.RayError) as exc:
            self._actors.pop(handle.shard_id, None)
            self.ray.kill(actor)
            handle.state = "exited"
            why = "no node has room for it" if isinstance(exc, asyncio.TimeoutError) else str(exc)[-1500:]
            raise ProcessStartError(f"shard {handle.shard_id} ({options}) did not start: {why}") from None
        handle.info, handle.pid, handle.url = info, info["pid"], info["url"]
        handle.ready_at, handle.state = time.monotonic(), "ready"
        entry.watcher = asyncio.get_running_loop().create_task(self._watch(entry))
        node, cold = info["node_id"], handle.cold_start_s
        log.info("shard %s ready at %s on node %s in %.2f s", handle.shard_id, handle.url, node, cold)
        return handle

    async def _watch(self, entry: _Actor) -> None:
        handle = entry.handle
        try:
            await entry.actor.wait.remote()
            code = 0
        except self.ray.exceptions.RayError as exc:  # the actor died: node lost, worker killed
            log.warning("shard %s's actor died: %s", handle.shard_id, str(exc).splitlines()[0])
            code = -1
        if self._actors.get(handle.shard_id) is not entry:
            return
        self._actors.pop(handle.shard_id)
        self.exits.append((handle.shard_id, code))
        self.ray.kill(entry.actor)
        if handle.state == "stopping":  # drained, or stopped by us
            handle.state = "exited"
            return
        if self.on_exit is not None:
            self.on_exit(handle.shard_id, code)
        if not self.restart_crashed:
            handle.state = "exited"
            return
        log.warning("shard %s ended unexpectedly (%s); restarting it under the same id", handle.shard_id, code)
        handle.restarts += 1
        handle.state = "starting"
        self._restarting[handle.shard_id] = handle
        try:
            await self._restart(handle)
        finally:
            self._restarting.pop(handle.shard_id, None)

    async def _restart(self, handle: ShardHandle) -> None:
        """Launch ``handle`` again until it is ready: the first try can land on a node that is dying
        but not yet known dead (its actor dies with it), or wait for room that frees up later."""
        backoff, deadline = Backoff(0.5, 10.0), time.monotonic() + self.ready_timeout_s
        while handle.shard_id in self._restarting:  # stop() takes it out
            try:
                await self._launch(handle)
                return
            except ProcessStartError as exc:
                if time.monotonic() > deadline:
                    log.error("restart of %s failed for good: %s", handle.shard_id, exc)
                    return
                log.warning("restart of %s failed, trying again: %s", handle.shard_id, str(exc).splitlines()[0])
            await asyncio.sleep(backoff.next())  # back-off between placement attempts
            handle.state = "starting" if handle.shard_id in self._restarting else "exited"

    async def stop(self, shard_id: str, timeout_s: float = 10.0) -> None:
        if shard_id in self._restarting:  # its restart loop ends at its next attempt
            self._restarting.pop(shard_id).state = "stopping"
        entry = self._actors.get(shard_id)
        if entry is None:
            return
        entry.handle.state = "stopping"
        try:
            await asyncio.wait_for(entry.actor.stop.remote(), timeout_s)
        except (asyncio.TimeoutError, self.ray.exceptions.RayError):
            pass  # killed below either way
        self._actors.pop(shard_id, None)
        if entry.watcher is not None:
            entry.watcher.cancel()
        self.ray.kill(entry.actor)
        entry.handle.state = "exited"

    def expect_exit(self, shard_id: str) -> None:
        if shard_id in self._actors:
            self._actors[shard_id].handle.state = "stopping"

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(shard_id) for shard_id in list(self._actors)))
