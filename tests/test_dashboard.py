"""The coordinator's /ui in headless Chromium: the numbers of /v1/pools render in the page."""

from __future__ import annotations

import json
import re
import urllib.request

from tests.browser import cells, render
from tests.test_coordinator_api import AUTH

SHARDS = [
    {
        "shard_id": "s-a",
        "zone": "a",
        "final_p50_ms": 120.0,
        "final_p95_ms": 300.0,
        "final_p99_ms": 410.0,
        "sessions": 3,
    },
    {
        "shard_id": "s-b",
        "zone": "b",
        "final_p50_ms": 180.0,
        "final_p95_ms": 350.0,
        "final_p99_ms": 530.0,
        "sessions": 5,
    },
]


def post(url: str, body: dict) -> dict:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {AUTH.shard_token(body['shard_id'])}"}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def test_dashboard_renders_pool_and_shard_numbers(coordinator_url):
    for i, s in enumerate(SHARDS):
        info = {"shard_id": s["shard_id"], "url": f"ws://127.0.0.1:{9000 + i}", "model": "tiny.en", "stage": "enc_a"}
        post(f"{coordinator_url}/v1/register", {**info, "zone": s["zone"]})
        load = {k: s[k] for k in ("final_p50_ms", "final_p95_ms", "final_p99_ms", "sessions")}
        post(f"{coordinator_url}/v1/heartbeat", {"shard_id": s["shard_id"], **load, "queue_delay_s": 0.012})
    decoder = {"shard_id": "s-dec", "url": "ws://127.0.0.1:9100", "model": "tiny.en", "stage": "dec"}
    post(f"{coordinator_url}/v1/register", decoder)
    post(f"{coordinator_url}/v1/heartbeat", {"shard_id": "s-dec", "busy": 0.4, "occupancy": 0.1})
    dom = render(f"{coordinator_url}/ui")
    assert re.search(r'<p id="status">updated [^<]+</p>', dom), dom[:500]
    assert cells(dom, "replicas") == ["2"]
    assert cells(dom, "sessions") == ["8"]
    assert cells(dom, "p50") == ["150"]  # mean of the shards' p50
    assert cells(dom, "p95") == ["350"]  # worst shard's p95
    assert cells(dom, "p99") == ["530"]  # worst shard's p99
    for s in SHARDS:
        assert f">{s['shard_id']}<" in dom
    assert cells(dom, "state") == ["closed", "closed", "closed"]
    # every stage is a pool of its own
    assert cells(dom, "stagename") == ["enc_a", "enc_b", "dec"]
    assert cells(dom, "stagereplicas") == ["2", "0", "1"]
    assert cells(dom, "stagebusy") == ["0", "0", "0.4"]
