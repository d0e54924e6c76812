"""Fuzzing every endpoint of the coordinator and the shards with seeded hostile inputs (tests/fuzz.py).

Per endpoint: ``FUZZ_INPUTS`` inputs (10 000 by default; ``SPLITASR_FUZZ_INPUTS`` changes it). What
must hold: the server never crashes (the process lives and answers its health check), every
request gets an answer (HTTP: a status below 500 with a JSON error; stream: every frame the protocol
rejects gets an ERROR, and every PING sent after an input its PONG; stage: every request with a
request id its STAGE_RES or ERROR), and memory stays bounded. Each test prints its counts; the
numbers go to the closing note of issue 11.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
import zlib
from collections import Counter

import aiohttp
import msgpack
import numpy as np
import pytest

from splitasr.cloud.shard.tensors import pack
from splitasr.shared import protocol as p
from splitasr.shared.auth import edge_token
from splitasr.shared.errors import ProtocolError
from splitasr.shared.features import DEFAULT_SPEC
from splitasr.shared.quant import features_frame
from tests.fuzz import Mutator
from tests.test_coordinator_api import AUTH, SHARD

FUZZ_INPUTS = int(os.environ.get("SPLITASR_FUZZ_INPUTS", "10000"))
ADMIN = "test-admin-token"
DEVICE_TOKEN = AUTH.device_token("fz", ttl_s=86_400)


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def body(frame: p.Frame) -> dict:
    return msgpack.unpackb(p.encode(frame), raw=False)


# -- coordinator ----------------------------------------------------------------------------------

COORDINATOR_SEEDS = {
    "/v1/register": (SHARD, lambda b: AUTH.shard_token(str(b.get("shard_id")))),
    "/v1/heartbeat": (
        {"shard_id": "s1", "sessions": 1, "queue_delay_s": 0.1, "busy": 0.5, "final_p99_ms": 20.0},
        lambda b: AUTH.shard_token(str(b.get("shard_id"))),
    ),
    "/v1/scale": ({"pool": "tiny.en", "replicas": 2}, lambda b: ADMIN),
    "/v1/drain": ({"shard_id": "s1"}, lambda b: ADMIN),
}


@pytest.mark.parametrize("path", [*COORDINATOR_SEEDS, "/v1/route"])
def test_fuzz_coordinator(coordinator_url, path):
    mutator = Mutator(seed=zlib.crc32(path.encode()))  # not hash(): str hashes change per process
    statuses: Counter = Counter()
    parser_refusals: Counter = Counter()

    async def main():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.post(f"{coordinator_url}/v1/register", json=SHARD, headers=_bearer(AUTH.shard_token("s1"))):
                pass
            for _ in range(FUZZ_INPUTS):
                if path == "/v1/route":
                    # a new stream's route: with its device's token, tickets are signed for the session
                    params = mutator.query({"language": "en", "zone": "a", "device": "fz", "session": "sess-1"})
                    request = http.get(f"{coordinator_url}{path}", params=params, headers=_bearer(DEVICE_TOKEN))
                else:
                    seed, token = COORDINATOR_SEEDS[path]
                    data = mutator.json_body(seed)
                    parsed = _loads(data)
                    headers = {"Content-Type": "application/json", **_bearer(token(parsed))}
                    request = http.post(f"{coordinator_url}{path}", data=data, headers=headers)
                async with request as resp:
                    statuses[resp.status] += 1
                    if resp.status == 503:  # "try later" (no live shard to route to) is an answer
                        assert (await resp.json())["retry_after_ms"] > 0
                    else:
                        assert resp.status < 500, (path, resp.status, await resp.text())
                    if resp.status >= 400 and resp.content_type == "application/json":
                        assert "error" in await resp.json(), await resp.text()  # handlers explain in JSON
                    elif resp.status >= 400:  # refused by the HTTP parser before any handler (a 4xx)
                        parser_refusals[resp.status] += 1
            async with http.get(f"{coordinator_url}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"{coordinator_url}/v1/pools", headers=_bearer(ADMIN)) as resp:
                assert resp.status == 200

    rss = rss_mb(os.getpid())
    started = time.monotonic()
    asyncio.run(main())
    print(
        f"\nfuzz {path}: {sum(statuses.values())} inputs in {time.monotonic() - started:.1f} s, statuses "
        f"{dict(sorted(statuses.items()))} (HTTP parser: {sum(parser_refusals.values())}), 0 crashes, "
        f"0 unanswered, test-process RSS {rss_mb(os.getpid()) - rss:+.1f} MB (the coordinator runs in it)"
    )
    assert sum(statuses.values()) == FUZZ_INPUTS


def _bearer(token: str) -> dict[str, str]:
    try:
        token.encode("latin-1")
    except UnicodeEncodeError:
        return {}
    return {"Authorization": f"Bearer {token}"} if token and "\n" not in token and "\r" not in token else {}


def _loads(data: bytes) -> dict:
    """The body as the server will parse it, to sign for the shard id it names (a valid credential
    gets the input past authentication to the schema); {} when it is not a JSON object."""
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# -- shards ---------------------------------------------------------------------------------------


def run_against(shard: dict, main) -> tuple[float, float]:
    """Run the fuzz coroutine ``main``; the shard must still be healthy after it, its RSS grown by
    less than 200 MB. Returns (seconds, RSS growth in MB)."""
    rss, started = rss_mb(shard["pid"]), time.monotonic()
    asyncio.run(main())
    seconds = time.monotonic() - started
    url = shard["url"].replace("ws://", "http://") + "/healthz"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert json.loads(resp.read())["status"] == "ok"
    growth = rss_mb(shard["pid"]) - rss
    assert growth < 200, growth
    return seconds, growth


def _shard(cluster, role: str) -> dict:
    return next(s for s in cluster.describe() if s["role"] == role)


def _rejected(data: bytes, max_bytes: int = p.MAX_FRAME_BYTES) -> bool:
    try:
        p.decode(data, max_bytes=max_bytes)
    except ProtocolError:
        return True
    return False


class StreamFuzz:
    """One edge connection at a time; reconnects (with a fresh HELLO) when the shard closes it."""

    def __init__(self, url: str, mutator: Mutator):
        self.url, self.m = url, mutator
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.errors: Counter = Counter()
        self.closed_after_error = 0
        self.nonce = 0
        mel = np.linspace(-1.5, 1.0, 80 * 8, dtype=np.float32).reshape(80, 8)
        self.seeds = [
            body(features_frame(mel, 0, 0, 0, "int8")),
            body(features_frame(mel, 1, 0, 0, "float16")),
            body(p.EndOfUtterance(utt=0, last_seq=0, speech_end=4)),
            body(p.Ping(nonce=1)),
            body(self.hello("fuzz-dev")),
        ]

    @staticmethod
    def hello(device: str) -> p.Hello:
        return p.Hello(device_id=device, token=edge_token(device), language="en", feature_spec=DEFAULT_SPEC.to_dict())

    async def connect(self) -> None:
        if self.http is None:
            self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.url, max_msg_size=4 * p.MAX_FRAME_BYTES)
        await self.ws.send_bytes(p.encode(self.hello("fuzz-dev")))
        reply = await self.receive()
        assert isinstance(reply, p.Welcome), reply

    async def receive(self) -> p.Frame | None:
        msg = await self.ws.receive(timeout=30)
        if msg.type != aiohttp.WSMsgType.BINARY:
            return None
        return p.decode(msg.data)

    async def one(self) -> None:
        """Send one hostile frame, then a PING; wait for its PONG, collecting what came before it."""
        if self.ws is None or self.ws.closed:
            await self.connect()
        seed = self.m.rng.choice(self.seeds)
        data = self.m.frame(seed)
        await self.ws.send_bytes(data)
        self.nonce += 1
        await self.ws.send_bytes(p.encode(p.Ping(nonce=self.nonce)))
        got_error = False
        while True:
            frame = await self.receive()
            if frame is None:  # the shard closed the connection: only after telling why
                assert got_error, f"connection closed without an ERROR after {data[:200]!r}"
                self.closed_after_error += 1
                await self.ws.close()
                return
            if isinstance(frame, p.Error):
                got_error = True
                self.errors[frame.code] += 1
            if isinstance(frame, p.Pong) and frame.nonce == self.nonce:
                break
        if _rejected(data):
            assert got_error, f"no ERROR for a frame the protocol rejects: {data[:200]!r}"

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()


def test_fuzz_stream_endpoint(shards):
    shard = _shard(shards, "enc_a")
    fuzz = StreamFuzz(shard["url"] + "/v1/stream", Mutator(seed=11))

    async def main():
        try:
            for _ in range(FUZZ_INPUTS):
                await fuzz.one()
        finally:
            await fuzz.close()

    seconds, growth = run_against(shard, main)
    print(
        f"\nfuzz /v1/stream: {FUZZ_INPUTS} frames in {seconds:.1f} s, errors "
        f"{dict(fuzz.errors.most_common())}, connections closed after an ERROR {fuzz.closed_after_error}, "
        f"0 crashes, 0 unanswered, shard RSS {growth:+.1f} MB"
    )


def test_fuzz_stage_endpoint(shards):
    shard = _shard(shards, "enc_b")
    d = shards_width()
    m = Mutator(seed=12)
    seed = body(
        p.StageRequest(
            "r", "tiny.en", "enc_b", 30000, pack({"hidden": np.zeros((1, 4, d), np.float32)}), meta={"audio_s": 0.1}
        )
    )
    answers: Counter = Counter()

    async def main():
        headers = {"Authorization": f"Bearer {AUTH.stage_token()}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            ws = await http.ws_connect(shard["url"] + "/v1/stage", max_msg_size=p.MAX_STAGE_FRAME_BYTES)
            in_flight = asyncio.Semaphore(32)  # pipelined, as stage clients are
            expected: dict[str, dict] = {}  # req_id -> request, for the requests that carry a usable one

            async def send() -> None:
                for i in range(FUZZ_INPUTS):
                    variant = m.frame_body(seed)
                    if "req_id" in variant and m.rng.random() < 0.8:
                        variant["req_id"] = f"f{i}"  # most requests can be told apart ...
                    data = msgpack.packb(variant, use_bin_type=True)
                    if variant.get("req_id") == f"f{i}" and not _rejected(data, p.MAX_STAGE_FRAME_BYTES):
                        expected[f"f{i}"] = variant  # ... and a request that decodes is answered by its id
                    await in_flight.acquire()
                    await ws.send_bytes(data)

            async def receive() -> None:
                for _ in range(FUZZ_INPUTS):  # one answer per message, whatever it held
                    msg = await ws.receive(timeout=60)
                    assert msg.type == aiohttp.WSMsgType.BINARY, msg
                    in_flight.release()
                    frame = p.decode(msg.data, max_bytes=p.MAX_STAGE_FRAME_BYTES)
                    assert isinstance(frame, p.StageResponse | p.Error), frame
                    expected.pop(frame.req_id, None)
                    answers[type(frame).__name__ if isinstance(frame, p.StageResponse) else frame.code] += 1

            await asyncio.gather(send(), receive())
            assert not expected, f"no answer for {sorted(expected)[:10]}"
            await ws.close()

    seconds, growth = run_against(shard, main)
    print(
        f"\nfuzz /v1/stage (enc_b): {FUZZ_INPUTS} requests in {seconds:.1f} s, answers "
        f"{dict(answers.most_common())}, 0 crashes, 0 unanswered, shard RSS {growth:+.1f} MB"
    )
    assert sum(answers.values()) == FUZZ_INPUTS


def shards_width() -> int:
    from splitasr.models.stages import ensure_stages

    return ensure_stages("tiny.en", int8=True, show_progress=False).manifest["dims"]["n_state"]
