"""Run a coordinator: the local process backend (the embedded default of ``splitasr up``) or Ray."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from splitasr.cloud.coordinator.backend import Backend, LocalProcessBackend
from splitasr.cloud.coordinator.config import ClusterConfig
from splitasr.cloud.coordinator.service import Coordinator, create_app
from splitasr.cloud.coordinator.state import StateStore
from splitasr.shared import tls
from splitasr.shared.auth import SECRET_ENV, ensure_cluster_secret, secret_from_env
from splitasr.shared.limits import guard_server_loop
from splitasr.shared.protocol import IDLE_CONNECTION_S

log = logging.getLogger(__name__)

STATE_FILE = "coordinator.db"


async def run_coordinator(
    config: ClusterConfig,
    ready_file: str | None = None,
    workdir: str | None = None,
    stop: asyncio.Event | None = None,
    on_listening: Callable[[str], None] | None = None,
    on_ready: Callable[[str], None] | None = None,
    show_progress: bool = False,
) -> None:
    """Serve the coordinator, start every pool's shards, run the control loop until SIGTERM/SIGINT.
    ``on_listening(url)`` runs once it serves HTTP, ``on_ready(url)`` once every pool is up."""
    from splitasr.models.stages import ensure_stages

    for pool in config.pools:  # export once here, not in every shard process at the same time
        await asyncio.to_thread(ensure_stages, pool.model, int8=pool.int8, show_progress=show_progress)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    guard_server_loop(loop)
    if threading.current_thread() is threading.main_thread():  # as a Ray actor it runs in another thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    # with a workdir, the coordinator's state survives a restart: the shards it started are adopted
    state = StateStore(Path(workdir) / STATE_FILE) if workdir else None
    if state is not None:
        state.claim()
        if secret_from_env() is None and state.get("cluster_secret"):
            os.environ[SECRET_ENV] = state.get("cluster_secret")  # the adopted shards hold this one
        state.put("cluster_secret", ensure_cluster_secret())
    coordinator = Coordinator(config, backend=None)
    runner = web.AppRunner(
        create_app(coordinator), handle_signals=False, access_log=None, keepalive_timeout=IDLE_CONNECTION_S
    )
    await runner.setup()
    same_port = await _listen(runner, config, int(state.get("port") or 0) if state is not None else 0)
    host, port = runner.addresses[0][:2]
    scheme = "https" if config.tls_cert else "http"
    url = config.public_url or f"{scheme}://{host}:{port}"
    if on_listening is not None:
        on_listening(url)
    backend = _backend(config, url, workdir, state)
    if state is not None and isinstance(backend, LocalProcessBackend):
        state.put("port", str(port))
        adopted = backend.adopt()
        if adopted and not same_port:  # they would heartbeat to a port nobody listens on: stop them
            log.warning("stopping %d shards of the last coordinator: they cannot reach this one", len(adopted))
            await asyncio.gather(*(backend.stop(h.shard_id) for h in adopted))
    coordinator.attach(backend)
    advertiser = None
    try:
        if config.zeroconf:
            from splitasr.shared.discovery import Advertiser

            advertiser = Advertiser(host, port, scheme=scheme)
            await advertiser.start()
        log.info("coordinator at %s; starting pools %s", url, ", ".join(coordinator.controllers))
        starting = asyncio.gather(
            *(c.start_chain() for c in [*coordinator.controllers.values(), *coordinator.spot.values()])
        )
        done, _ = await asyncio.wait({starting, asyncio.ensure_future(stop.wait())}, return_when="FIRST_COMPLETED")
        if starting in done:
            starting.result()
            await coordinator.wait_registered({h.shard_id for h in backend.list()}, timeout_s=30)
            coordinator.start()
            if ready_file:
                tmp = Path(ready_file).with_suffix(".tmp")
                tmp.write_text(json.dumps({"pid": os.getpid(), "url": url, "workdir": str(backend.workdir)}))
                os.replace(tmp, ready_file)
            log.info("cluster ready")
            if on_ready is not None:
                on_ready(url)
            await stop.wait()
        else:
            starting.cancel()
    finally:
        if advertiser is not None:
            await advertiser.close()
        await coordinator.close()
        await runner.cleanup()
        if state is not None:
            state.put("owner_pid", "0")  # stopped cleanly: every shard it started is stopped too
            state.close()


def _backend(config: ClusterConfig, url: str, workdir: str | None, state: StateStore | None) -> Backend:
    if config.backend == "local":
        return LocalProcessBackend(url, Path(workdir) if workdir else None, state=state)
    from splitasr.cloud.coordinator.ray_backend import RayBackend

    backend = RayBackend(
        url,
        address=config.ray_address,
        namespace=config.ray_namespace,
        shard_host=config.shard_host,
        zone_resources=config.zone_resources,
        stage_resources={p.model: p.stage_resources for p in config.pools},
    )
    backend.state = state  # pins survive a restart; the actors themselves are not adopted
    return backend


async def _listen(runner: web.AppRunner, config: ClusterConfig, last_port: int) -> bool:
    """Bind the configured port; with port 0, the port of the last coordinator of this state first,
    where the shards it started send their heartbeats. True when that port (or the configured one,
    the same) is the one bound."""
    context = tls.server_context(config.tls_cert, config.tls_key) if config.tls_cert else None
    if config.port == 0 and last_port:
        try:
            await web.TCPSite(runner, config.host, last_port, ssl_context=context).start()
            return True
        except OSError as exc:
            log.warning("cannot listen on the last coordinator's port %d (%s)", last_port, exc)
    await web.TCPSite(runner, config.host, config.port, ssl_context=context).start()
    return config.port == last_port
