"""The shard process: an aiohttp app serving one stage of one model, with health, readiness and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from splitasr.cloud.shard.appkeys import CONFIG, METRICS, READY, SOCKETS, STAGE0, WORKER, is_ready
from splitasr.cloud.shard.config import NEXT_ROLE, ShardConfig
from splitasr.cloud.shard.local_chain import later_stages
from splitasr.cloud.shard.metrics import ShardMetrics
from splitasr.cloud.shard.registration import CoordinatorLink
from splitasr.cloud.shard.roles import make_worker
from splitasr.cloud.shard.stage0 import Stage0
from splitasr.cloud.shard.stream import link_handler, stream_handler
from splitasr.cloud.shard.worker import StageWorker
from splitasr.models.stages import ensure_stages
from splitasr.shared import protocol as p
from splitasr.shared import tls
from splitasr.shared.auth import bearer
from splitasr.shared.errors import AuthError, ProtocolError, SplitASRError, StageUnavailableError
from splitasr.shared.flags import resolve
from splitasr.shared.limits import guard_server_loop

log = logging.getLogger(__name__)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    body = {"ready": is_ready(request.app), "model": config.model, "role": config.role}
    return web.json_response(body, status=200 if body["ready"] else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(request.app[METRICS].registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _answer(ws: web.WebSocketResponse, worker: StageWorker, request: p.StageRequest, lock: asyncio.Lock) -> None:
    try:
        frame: p.Frame = await worker.serve_stage(request)
    except ProtocolError as exc:
        frame = p.error_frame(exc, req_id=request.req_id)
    except (StageUnavailableError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        frame = p.Error(code=p.E_INTERNAL, message=str(exc), retryable=True, req_id=request.req_id)
    except SplitASRError as exc:
        frame = p.Error(code=p.E_FIELD, message=str(exc), retryable=False, req_id=request.req_id)
    except Exception as exc:  # every request gets an answer, whatever went wrong
        log.warning("stage request %s failed: %r", request.req_id[:64], exc)
        frame = p.Error(code=p.E_INTERNAL, message=type(exc).__name__, retryable=True, req_id=request.req_id)
    if not ws.closed:
        async with lock:
            await ws.send_bytes(p.encode(frame))


async def stage_handler(request: web.Request) -> web.WebSocketResponse:
    """STAGE_REQ in, STAGE_RES out; requests on one connection run concurrently."""
    if not is_ready(request.app):
        raise web.HTTPServiceUnavailable(text="shard not ready")
    auth = request.app[CONFIG].auth
    if auth is not None:
        try:
            auth.check_stage(bearer(request.headers))
        except AuthError as exc:
            log.warning("refused a stage connection from %s: %s", request.remote, exc)
            raise web.HTTPUnauthorized(text=str(exc)) from None
    ws = web.WebSocketResponse(max_msg_size=p.MAX_STAGE_FRAME_BYTES, heartbeat=20)
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    worker, lock, tasks = request.app[WORKER], asyncio.Lock(), set()
    try:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            try:
                frame = p.decode(msg.data, max_bytes=p.MAX_STAGE_FRAME_BYTES)
                if not isinstance(frame, p.StageRequest):
                    raise ProtocolError(p.E_STATE, f"unexpected {frame.TYPE} on the stage socket")
            except ProtocolError as exc:
                async with lock:
                    await ws.send_bytes(p.encode(p.error_frame(exc)))
                continue
            task = asyncio.create_task(_answer(ws, worker, frame, lock))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return ws


async def _load(app: web.Application):
    """cleanup_ctx: load and warm the stage in a thread (health answers meanwhile), then mark ready."""
    config = app[CONFIG]
    loop = asyncio.get_running_loop()
    started = time.perf_counter()

    def load() -> StageWorker:
        artifacts = ensure_stages(config.model, int8=config.int8, show_progress=False)
        worker = make_worker(config, artifacts, app[METRICS])
        worker.warm_up()
        if config.whole_chain:
            worker.client = later_stages(config, artifacts, app[METRICS])
        return worker

    async def start() -> None:
        worker = await loop.run_in_executor(None, load)
        await worker.start()
        app[WORKER] = worker
        if config.role == "enc_a":
            app[STAGE0] = Stage0(worker)
        app[READY].set()
        log.info("%s %s shard ready in %.2f s", config.model, config.role, time.perf_counter() - started)

    loader = asyncio.create_task(start())
    yield
    loader.cancel()
    await asyncio.gather(loader, return_exceptions=True)
    if WORKER in app:
        await app[WORKER].close()


def create_app(config: ShardConfig) -> web.Application:
    app = web.Application()
    app[CONFIG] = config
    app[METRICS] = ShardMetrics(config.model, config.role)
    app[READY] = asyncio.Event()
    app[SOCKETS] = weakref.WeakSet()
    app.cleanup_ctx.append(_load)
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/stage", stage_handler)
    if config.role == "enc_a":
        app.router.add_get("/v1/stream", stream_handler)
        app.router.add_post("/v1/link", link_handler)
    return app


async def _close_sockets(app: web.Application) -> None:
    """On shutdown, close open websockets (edges reconnect elsewhere); otherwise cleanup waits on them."""
    for ws in list(app[SOCKETS]):
        await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"shard stopping")


def _write_ready_file(path: str, payload: dict) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


async def serve(config: ShardConfig, stop: asyncio.Event | None = None) -> None:
    """Run a shard until SIGTERM/SIGINT (in the main thread) or ``stop`` is set; writes
    ``config.ready_file`` once ready (with the bound port)."""
    guard_server_loop(asyncio.get_running_loop())
    app = create_app(config)
    # keepalive_timeout also closes connections that never send a request (half-open, slow headers)
    runner = web.AppRunner(app, handle_signals=False, keepalive_timeout=p.IDLE_CONNECTION_S)
    await runner.setup()
    ssl_context = tls.server_context(config.tls_cert, config.tls_key) if config.tls_cert else None
    site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context)
    await site.start()
    host, port = runner.addresses[0][:2]
    log.info("%s %s shard listening on %s:%d", config.model, config.role, host, port)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():  # a Ray actor's loop runs in another thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    ready_wait = asyncio.create_task(app[READY].wait())
    stop_wait = asyncio.create_task(stop.wait())
    await asyncio.wait({ready_wait, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    url = f"{'wss' if ssl_context else 'ws'}://{host}:{port}"
    link_task = None
    if app[READY].is_set() and config.coordinator_url:
        link_task = asyncio.create_task(_coordinator_link(app, url, on_orphan=stop.set).run())
        # a drained shard exits: stage 0 once its last session moved, later stages once idle
        drained = asyncio.create_task((app[STAGE0] if STAGE0 in app else app[WORKER]).drained.wait())
        drained.add_done_callback(lambda _: stop.set())
    if app[READY].is_set() and config.ready_file:
        _write_ready_file(
            config.ready_file,
            {
                "pid": os.getpid(),
                "host": host,
                "port": port,
                "role": config.role,
                "model": config.model,
                "url": url,
            },
        )
    await stop_wait
    ready_wait.cancel()
    if link_task is not None:
        link_task.cancel()
    log.info("%s %s shard stopping", config.model, config.role)
    await runner.cleanup()


def _coordinator_link(app: web.Application, url: str, on_orphan: Callable[[], None]) -> CoordinatorLink:
    config, worker = app[CONFIG], app[WORKER]
    stage0 = app[STAGE0] if STAGE0 in app else None
    info = {
        "shard_id": config.shard_id,
        "url": url,
        "model": config.model,
        "stage": config.role,
        "version": worker.artifacts.version,
        "config_version": config.config_version,
        "weights_sha256": worker.artifacts.manifest["weights_sha256"],
        "zone": config.zone,
        "region": config.region,
        "capacity": config.max_sessions,
        "pid": os.getpid(),
    }
    next_stage = None
    if config.role in NEXT_ROLE and not config.next_urls and not config.whole_chain:
        next_stage = (config.model, NEXT_ROLE[config.role], config.config_version)
    return CoordinatorLink(
        config.coordinator_url,
        info,
        token=config.auth.shard_token(info["shard_id"]) if config.auth else "",
        load=stage0.load if stage0 is not None else worker.load,
        on_drain=stage0.start_drain if stage0 is not None else worker.start_drain,
        on_drain_now=(lambda: stage0.start_drain(now=True)) if stage0 is not None else None,
        on_flags=stage0.set_flags if stage0 is not None else lambda rules: worker.apply_flags(resolve(rules, None)),
        next_stage=next_stage,
        on_next_stage=worker.client.set_replicas if next_stage is not None else None,
        interval_s=config.heartbeat_s,
        orphan_after_s=config.orphan_after_s,
        on_orphan=on_orphan,
    )
