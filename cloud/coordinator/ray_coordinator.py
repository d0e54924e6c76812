"""The coordinator as a detached named Ray actor (``splitasr up --backend ray --detached``).

The actor runs the same :func:`~splitasr.cloud.coordinator.run.run_coordinator` as ``splitasr up``
does in the foreground, in its own worker process on the Ray cluster, and outlives the command that
started it; ``splitasr down`` stops it (and with it every shard it started). It asks for no CPU,
so it can live on a head node that runs no shards. Its listening address: the configured host, or
with ``host: node`` the address of the node Ray placed it on.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from splitasr.cloud.coordinator.config import ClusterConfig
from splitasr.cloud.coordinator.ray_backend import connect, init_worker, until_ready
from splitasr.shared.auth import SECRET_ENV, ensure_cluster_secret

ACTOR_NAME = "splitasr-coordinator"
READY_TIMEOUT_S = 600.0  # it exports the stages on first use, then starts every pool


class CoordinatorActor:
    def __init__(self, config: ClusterConfig, env: dict[str, str]):
        init_worker(env)
        self.config = config
        self.stop_event: asyncio.Event | None = None
        self.task: asyncio.Task | None = None

    async def start(self) -> dict:
        """Serve the coordinator and start its pools; answers {url, pid} once the cluster is ready
        (again, without starting anything, when it already runs)."""
        if self.task is not None:
            return await until_ready(self.task, self.ready, READY_TIMEOUT_S, "coordinator")
        import dataclasses

        import ray

        from splitasr.cloud.coordinator.run import run_coordinator

        config = self.config
        if config.host == "node":
            config = dataclasses.replace(config, host=ray.util.get_node_ip_address())
        workdir = Path(tempfile.mkdtemp(prefix="splitasr-coordinator-"))
        self.ready = workdir / "ready.json"
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(run_coordinator(config, str(self.ready), str(workdir), self.stop_event))
        return await until_ready(self.task, self.ready, READY_TIMEOUT_S, "coordinator")

    async def stop(self) -> None:
        """Stop every shard it started, then the coordinator."""
        if self.stop_event is not None:
            self.stop_event.set()
            await self.task


def start_detached(config: ClusterConfig) -> dict:
    """Start the coordinator actor (or find the running one) and return {url, pid} once it is ready."""
    ray = connect(config.ray_address, config.ray_namespace)
    env = {SECRET_ENV: ensure_cluster_secret(), "SPLITASR_ADMIN_TOKEN": config.admin_token}
    actor = (
        ray.remote(CoordinatorActor)
        .options(name=ACTOR_NAME, lifetime="detached", get_if_exists=True, num_cpus=0, max_restarts=0)
        .remote(config, env)
    )
    return ray.get(actor.start.remote())


def stop_detached(address: str | None, namespace: str = "splitasr") -> bool:
    """Stop the detached coordinator (False: none was running)."""
    ray = connect(address, namespace)
    try:
        actor = ray.get_actor(ACTOR_NAME)
    except ValueError:
        return False
    try:
        ray.get(actor.stop.remote(), timeout=120)
    finally:
        ray.kill(actor)
    return True
