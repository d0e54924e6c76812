"""Run a coordinator with the local process backend: the embedded default of ``splitasr up``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path

from aiohttp import web

from splitasr.cloud.coordinator.backend import LocalProcessBackend
from splitasr.cloud.coordinator.config import ClusterConfig
from splitasr.cloud.coordinator.service import Coordinator, create_app
from splitasr.shared.limits import guard_server_loop
from splitasr.shared.protocol import IDLE_CONNECTION_S

log = logging.getLogger(__name__)


async def run_coordinator(
    config: ClusterConfig, ready_file: str | None = None, workdir: str | None = None, stop: asyncio.Event | None = None
) -> None:
    """Serve the coordinator, start every pool's shards, run the control loop until SIGTERM/SIGINT."""
    from splitasr.models.stages import ensure_stages

    for pool in config.pools:  # export once here, not in every shard process at the same time
        await asyncio.to_thread(ensure_stages, pool.model, int8=pool.int8, show_progress=False)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    guard_server_loop(loop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    coordinator = Coordinator(config, backend=None)
    runner = web.AppRunner(
        create_app(coordinator), handle_signals=False, access_log=None, keepalive_timeout=IDLE_CONNECTION_S
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    backend = LocalProcessBackend(url, Path(workdir) if workdir else None)
    coordinator.attach(backend)
    advertiser = None
    try:
        if config.zeroconf:
            from splitasr.shared.discovery import Advertiser

            advertiser = Advertiser(host, port)
            await advertiser.start()
        log.info("coordinator at %s; starting pools %s", url, ", ".join(coordinator.controllers))
        starting = asyncio.gather(*(c.start_chain() for c in coordinator.controllers.values()))
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
            await stop.wait()
        else:
            starting.cancel()
    finally:
        if advertiser is not None:
            await advertiser.close()
        await coordinator.close()
        await runner.cleanup()
