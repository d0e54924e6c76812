"""Route tickets: the coordinator signs (device, session, shard, expiry) for each stage-0 candidate,
and a stage-0 shard started with ``--require-ticket`` (every one a coordinator starts) admits a
session only with a ticket for itself. Before, any device with a token could stream to any shard
it found, around the router's choice (load, zone, drains)."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from splitasr.cloud.processes import ShardSpec, ready_info, shard_command
from splitasr.shared import protocol as p
from splitasr.shared.auth import edge_token
from splitasr.shared.errors import AuthError
from tests.cluster import wait_until
from tests.test_coordinator_api import AUTH, SHARD, call
from tests.test_security import _close, _session


def test_ticket_names_device_session_and_shard_and_expires():
    ticket = AUTH.route_ticket("dev-a", "sess-1", "shard-1", ttl_s=60, now=1000.0)
    AUTH.check_route_ticket("dev-a", "sess-1", "shard-1", ticket, now=1059.0)
    for device, session, shard, why in (
        ("dev-b", "sess-1", "shard-1", "not valid"),
        ("dev-a", "sess-2", "shard-1", "not valid"),
        ("dev-a", "sess-1", "shard-2", "not valid"),
    ):
        with pytest.raises(AuthError, match=why):
            AUTH.check_route_ticket(device, session, shard, ticket, now=1001.0)
    with pytest.raises(AuthError, match="expired"):
        AUTH.check_route_ticket("dev-a", "sess-1", "shard-1", ticket, now=1061.0)
    for bad in ("", "x", "1.2.3", "abc.def", 17, None):
        with pytest.raises(AuthError, match="route ticket"):
            AUTH.check_route_ticket("dev-a", "sess-1", "shard-1", bad, now=1001.0)
    forged_expiry = "9999999999." + ticket.split(".")[1]
    with pytest.raises(AuthError, match="not valid"):
        AUTH.check_route_ticket("dev-a", "sess-1", "shard-1", forged_expiry, now=1001.0)


def test_the_coordinator_hands_tickets_to_devices_with_a_token(coordinator_url):
    assert call(f"{coordinator_url}/v1/register", SHARD, token=AUTH.shard_token("s1"))[0] == 200
    route = f"{coordinator_url}/v1/route?language=en&device=dev-a&session=sess-1"
    assert call(route)[0] == 401  # a session's route needs its device's token
    assert call(route, token=edge_token("dev-b"))[0] == 401  # another device's token
    assert call(f"{coordinator_url}/v1/route?language=en&session=sess-1", token=edge_token("dev-a"))[0] == 400
    status, body = call(route, token=edge_token("dev-a"))
    assert status == 200 and body["candidates"]
    for candidate in body["candidates"]:
        AUTH.check_route_ticket("dev-a", "sess-1", candidate["shard_id"], candidate["ticket"])
    status, body = call(f"{coordinator_url}/v1/route?language=en")  # no session: a route, no tickets
    assert status == 200 and all("ticket" not in c for c in body["candidates"])


@pytest.fixture(scope="module")
def ticketed_stage0(shards, tmp_path_factory):
    """A stage-0 shard with ``--require-ticket`` and a known id, in front of the ``shards`` chain's encoder B."""
    workdir = tmp_path_factory.mktemp("ticketed")
    ready, log_file = workdir / "ready.json", workdir / "shard.log"
    enc_b = next(s.url for s in shards.shards if s.role == "enc_b")
    spec = ShardSpec("tiny.en", "enc_a", int8=True, next_urls=(enc_b,), extra_args=("--require-ticket",))
    with open(log_file, "w") as out:
        proc = subprocess.Popen(shard_command(spec, ready, shard_id="ticketed-0"), stdout=out, stderr=subprocess.STDOUT)
    try:
        port = wait_until(lambda: ready_info(proc, ready, log_file, "ticketed shard"), 120, "shard ready")["port"]
        yield f"ws://127.0.0.1:{port}/v1/stream"
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_shard_that_requires_tickets_admits_only_the_routed_session(ticketed_stage0):
    url = ticketed_stage0

    def ticket(device="dev-a", session="sess-1", shard="ticketed-0", **kw):
        return AUTH.route_ticket(device, session, shard, **kw)

    async def main():
        out = {}
        for name, hello in (
            ("none", {}),
            ("forged", {"ticket": "9999999999." + "0" * 64}),
            ("another shard's", {"ticket": ticket(shard="shard-elsewhere")}),
            ("another session's", {"ticket": ticket(session="sess-2")}),
            ("another device's", {"ticket": ticket(device="dev-b")}),
            ("expired", {"ticket": ticket(ttl_s=1, now=time.time() - 10)}),
            ("valid", {"ticket": ticket()}),
        ):
            http, ws, reply = await _session(url, "dev-a", session_id="sess-1", **hello)
            out[name] = reply
            await _close(http, ws)
        return out

    out = asyncio.run(main())
    for name, reply in out.items():
        if name == "valid":
            assert isinstance(reply, p.Welcome), reply
        else:  # retryable: the edge drops the ticket and asks the coordinator for a fresh route
            assert isinstance(reply, p.Error) and reply.code == p.E_TICKET and reply.retryable, (name, reply)
    assert out["expired"].message.endswith("expired")
