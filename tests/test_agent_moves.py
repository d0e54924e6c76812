"""The edge agent against in-process fakes on loopback (a coordinator's ``/v1/route`` and stage-0
shards): a shard that answers a running session with a retryable ``overloaded`` ERROR and a
``retry_after_ms`` is skipped for that long, even when the coordinator, which has not noticed the
overload, routes the session to it again; a lost session asks the coordinator again instead of
taking the next shard of an old answer."""

from __future__ import annotations

import asyncio

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from splitasr.edge.agent import STREAM_PATH, AgentOptions, EdgeAgent
from splitasr.edge.audio_in import file_source
from splitasr.shared import protocol as p
from tests.cluster import REAL_EN

CLIP = REAL_EN / "en_ljspeech_LJ001-0026_to_0030_concat.flac"  # 35 s, several utterances


def fake_shard(behaviour: str, hellos: list) -> web.Application:
    """A stage-0 stand-in: WELCOME to every HELLO; then ``busy``: an overload ERROR at the first
    FEATURES; ``draining``: a FINAL for the first EOU, then DRAIN (a rolling restart); ``crash``: a
    FINAL for the first EOU, then the connection drops (no DRAIN; once, on the first session);
    ``refuse``: an overload ERROR with a ``retry_after_ms`` for every HELLO."""

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        finals = 0
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                continue
            frame = p.decode(msg.data)
            if isinstance(frame, p.Hello):
                hellos.append(frame.session_id)
                if behaviour == "refuse":
                    error = p.Error(p.E_OVERLOAD, "full", retryable=True, retry_after_ms=60_000)
                    await ws.send_bytes(p.encode(error))
                    break
                await ws.send_bytes(p.encode(p.Welcome(session_id=frame.session_id, feature_spec=frame.feature_spec)))
            elif isinstance(frame, p.Features) and behaviour == "busy":
                error = p.Error(p.E_OVERLOAD, "busy", retryable=True, retry_after_ms=60_000)
                await ws.send_bytes(p.encode(error))
            elif isinstance(frame, p.EndOfUtterance) and behaviour != "busy":
                final = p.Final(utt=frame.utt, text=f"utterance {frame.utt}", language="en", model_version="fake")
                await ws.send_bytes(p.encode(final))
                finals += 1
                if behaviour == "draining" and finals == 1 and len(hellos) == 1:  # once, on the first session
                    await ws.send_bytes(p.encode(p.Drain(reason="restart")))
                if behaviour == "crash" and finals == 1 and len(hellos) == 1:  # once, on the first session
                    await ws.close(code=1011)
                    break
        return ws

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get(STREAM_PATH, stream)
    app.router.add_get("/healthz", healthz)
    return app


def fake_coordinator(shard_urls: list[str], routes: list, later: list[str] | None = None) -> web.Application:
    """Routes every request to the same shards, in the same order (it has not seen the overload);
    with ``later``, every request after the first to those instead."""

    async def route(request: web.Request) -> web.Response:
        routes.append(request.query["session"])
        urls = later if later is not None and len(routes) > 1 else shard_urls
        candidates = [
            {"shard_id": f"s{i}", "url": url, "zone": "a", "region": "r", "sessions": 0} for i, url in enumerate(urls)
        ]
        return web.json_response({"pool": "tiny.en", "stage": "enc_a", "candidates": candidates})

    app = web.Application()
    app.router.add_get("/v1/route", route)
    return app


def run_agent(hellos: dict, first: list[str], later: list[str] | None = None):
    """One agent through fake shards (``hellos``: behaviour -> HELLOs seen); the coordinator lists
    the shards named ``first``, then (``later``) others. Returns (stream url by name, report, routes)."""
    routes: list = []

    async def main():
        shards = {name: TestServer(fake_shard(name, hellos[name]), host="127.0.0.1", port=0) for name in hellos}
        for server in shards.values():
            await server.start_server()
        bases = {name: f"ws://127.0.0.1:{s.port}" for name, s in shards.items()}
        app = fake_coordinator([bases[n] for n in first], routes, [bases[n] for n in later] if later else None)
        coordinator = TestServer(app, host="127.0.0.1", port=0)
        await coordinator.start_server()
        try:
            options = AgentOptions(
                coordinator=f"http://127.0.0.1:{coordinator.port}", device_id="edge", language="en", final_timeout_s=30
            )
            report = await asyncio.wait_for(EdgeAgent(options).run(file_source(CLIP, realtime=False)), 60)
            return {name: base + STREAM_PATH for name, base in bases.items()}, report
        finally:
            for server in [*shards.values(), coordinator]:
                await server.close()

    urls, report = asyncio.run(main())
    return urls, report, routes


def test_an_overloaded_shard_is_skipped_for_its_retry_after_even_when_routed_again():
    hellos: dict[str, list] = {"busy": [], "draining": []}
    urls, report, routes = run_agent(hellos, ["busy", "draining"])
    # busy (overloaded) -> draining (FINAL, then DRAIN) -> routed again: busy is skipped -> draining
    assert report.shards == [urls["busy"], urls["draining"], urls["draining"]], report.shards
    assert len(hellos["busy"]) == 1 and len(routes) == 2
    assert report.utterances >= 2 and sorted(f.utt for f in report.finals) == list(range(report.utterances))


def test_a_lost_session_asks_the_coordinator_again():
    """The first answer lists ``crash`` and ``stale``; when ``crash`` drops the session, the
    coordinator lists only ``fresh`` (``stale`` died or drains: it knows, the edge's old answer does not)."""
    hellos: dict[str, list] = {"crash": [], "stale": [], "fresh": []}
    urls, report, routes = run_agent(hellos, ["crash", "stale"], later=["fresh"])
    assert report.shards == [urls["crash"], urls["fresh"]], report.shards
    assert hellos["stale"] == [] and len(routes) == 2 and report.reconnects == 1
    assert report.utterances >= 2 and sorted(f.utt for f in report.finals) == list(range(report.utterances))


def test_a_shard_that_refuses_a_hello_with_retry_after_is_skipped_for_that_long():
    """``refuse`` answers HELLO with overloaded, retry after 60 s; the session goes to ``crash``,
    which drops it after its first FINAL; the coordinator, not having seen the overload, lists
    ``refuse`` again (with ``fresh``): it is not tried again."""
    hellos: dict[str, list] = {"refuse": [], "crash": [], "fresh": []}
    urls, report, routes = run_agent(hellos, ["refuse", "crash"], later=["refuse", "fresh"])
    assert len(hellos["refuse"]) == 1 and len(routes) == 2, (hellos, routes)
    assert report.shards == [urls["crash"], urls["fresh"]], report.shards
    assert report.utterances >= 2 and sorted(f.utt for f in report.finals) == list(range(report.utterances))
