"""Coordinator HTTP API and cluster config: typed, clear errors for bad input; nothing else disturbed."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from splitasr.cloud.coordinator.config import load_config
from splitasr.shared.auth import ClusterAuth, ensure_cluster_secret
from splitasr.shared.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
AUTH = ClusterAuth(ensure_cluster_secret())  # the coordinator under test runs in this process
SHARD = {"shard_id": "s1", "url": "ws://127.0.0.1:9", "model": "tiny.en", "stage": "enc_a", "zone": "a"}


def call(url: str, body=None, token: str | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        return exc.code, json.loads(text) if text.startswith(b"{") else {"text": text.decode()}


def test_registration_heartbeat_and_route_errors(coordinator_url):
    token = AUTH.shard_token("s1")
    assert call(f"{coordinator_url}/v1/register", raw=b"not json")[0] == 400
    status, body = call(f"{coordinator_url}/v1/register", {"shard_id": "x"}, token=AUTH.shard_token("x"))
    assert status == 400 and all(f"{k}: Field required" in body["error"] for k in ("url", "model", "stage"))
    status, body = call(f"{coordinator_url}/v1/register", {**SHARD, "stage": "enc_c"}, token=token)
    assert status == 400 and "stage: Input should be 'enc_a', 'enc_b' or 'dec'" in body["error"]
    status, body = call(f"{coordinator_url}/v1/heartbeat", {"shard_id": "nobody"}, token=AUTH.shard_token("nobody"))
    assert status == 404 and "register again" in body["error"]
    status, body = call(f"{coordinator_url}/v1/route?language=en")
    assert status == 503 and body["retry_after_ms"] > 0  # no shard yet: retry later
    assert call(f"{coordinator_url}/v1/register", SHARD, token=token)[0] == 200
    status, body = call(f"{coordinator_url}/v1/heartbeat", {"shard_id": "s1", "sessions": "many"}, token=token)
    assert status == 400 and "sessions: Input should be a valid integer" in body["error"]
    status, body = call(f"{coordinator_url}/v1/route?language=de")
    assert status == 400 and "no pool serves language 'de'" in body["error"] and "served: en" in body["error"]
    status, body = call(f"{coordinator_url}/v1/route?language=en&zone=a")
    assert status == 200 and [c["shard_id"] for c in body["candidates"]] == ["s1"]
    big = json.dumps({**SHARD, "pad": "x" * 100_000}).encode()
    assert call(f"{coordinator_url}/v1/register", raw=big)[0] == 413  # oversized bodies are refused


def test_admin_endpoints_need_the_token(coordinator_url):
    assert call(f"{coordinator_url}/v1/scale", {"pool": "tiny.en", "replicas": 2})[0] == 401
    assert call(f"{coordinator_url}/v1/scale", {"pool": "tiny.en", "replicas": 2}, token="wrong")[0] == 401
    assert call(f"{coordinator_url}/v1/drain", {"shard_id": "s1"})[0] == 401
    status, body = call(f"{coordinator_url}/v1/scale", {"pool": "tiny.en", "replicas": -1}, token="test-admin-token")
    assert status == 400 and "integer in [0, 64]" in body["error"]
    status, body = call(f"{coordinator_url}/v1/drain", {"shard_id": "nobody"}, token="test-admin-token")
    assert status == 404


def test_each_stage_pool_is_pinned_on_its_own(coordinator_url):
    admin = {"token": "test-admin-token"}
    status, body = call(f"{coordinator_url}/v1/scale", {"pool": "tiny.en", "replicas": 3, "stage": "dec"}, **admin)
    assert status == 200 and (body["stage"], body["pinned"]) == ("dec", 3)
    status, body = call(f"{coordinator_url}/v1/scale", {"pool": "tiny.en", "replicas": 0, "stage": "enc_b"}, **admin)
    assert status == 400 and "integer in [1, 64]" in body["error"]  # a chain needs every later stage
    status, body = call(f"{coordinator_url}/v1/scale", {"pool": "tiny.en", "replicas": 2, "stage": "enc_c"}, **admin)
    assert status == 400 and "enc_a, enc_b, dec" in body["error"]
    status, pools = call(f"{coordinator_url}/v1/pools")
    stages = pools["pools"][0]["stages"]
    assert (stages["dec"]["pinned"], stages["enc_b"]["pinned"], stages["enc_a"]["pinned"]) == (3, None, None)


def test_example_config_loads_and_bad_configs_are_explained(tmp_path, monkeypatch):
    monkeypatch.delenv("SPLITASR_ADMIN_TOKEN", raising=False)
    config = load_config(ROOT / "deploy" / "cluster.example.yaml")
    assert [p.model for p in config.pools] == ["tiny.en", "base"] and config.pools[0].zones == ("a", "b")
    assert config.admin_token  # generated when neither the file nor the environment gives one
    cases = {
        "pools: [{model: tiny.en, replicas: 3}]": "unknown keys replicas",
        "pools: [{model: whisper-huge}]": "pool model 'whisper-huge' unknown",
        "pools: [{model: tiny.en, autoscaler: {min_replicas: 5, max_replicas: 2}}]": "min_replicas <= max_replicas",
        "pools: [{model: tiny.en}, {model: tiny.en}]": "one pool per model",
        "zeroconf: true\nhost: 0.0.0.0": "concrete LAN address",
        "pools: [": "cannot read cluster config",
    }
    for text, message in cases.items():
        path = tmp_path / "cluster.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(path)


def test_late_shard_that_fails_its_health_probe_opens_its_breaker():
    import asyncio
    import socket

    import aiohttp
    from aiohttp import web

    from splitasr.cloud.coordinator.config import ClusterConfig
    from splitasr.cloud.coordinator.registry import ShardInfo
    from splitasr.cloud.coordinator.service import Coordinator

    async def main():
        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        alive_port = runner.addresses[0][1]
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            dead_port = s.getsockname()[1]
        now = [100.0]
        c = Coordinator(ClusterConfig(admin_token="t"), backend=None, clock=lambda: now[0])
        for name, port in (("alive", alive_port), ("dead", dead_port)):
            c.register(ShardInfo(shard_id=name, url=f"ws://127.0.0.1:{port}", model="tiny.en", stage="enc_a"))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            await c.probe(http)  # heartbeats are fresh: nobody is probed
            assert all(r.breaker.state.value == "closed" for r in c.registry.records.values())
            now[0] += 1.6  # heartbeats late, not yet the 2 s silence
            await c.probe(http)
        await runner.cleanup()
        states = {sid: r.breaker.state.value for sid, r in c.registry.records.items()}
        assert states == {"alive": "closed", "dead": "open"}
        assert "health probe failed" in c.registry.records["dead"].breaker.reason

    asyncio.run(main())
