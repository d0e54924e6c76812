"""Hostile peers: each attack from issue 11 against a real coordinator and real shard processes.

Every test here failed on the code before the fix (no credentials, no schemas, no limits) and
passes after it: forged registrations and heartbeats, hijacked shard ids, bad URL types, NaN/Inf
loads, unauthenticated stage and stream calls, stolen session ids, squatting, decompression bombs,
NaN scales, huge shapes, empty EOUs, unbounded utterances, a poisoned decoder batch, half-open
connections.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import zlib
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from splitasr.cloud.shard.tensors import pack
from splitasr.shared import protocol as p
from splitasr.shared.audio import load_audio
from splitasr.shared.auth import edge_token
from splitasr.shared.features import DEFAULT_SPEC, log_mel
from splitasr.shared.quant import features_frame
from tests.test_coordinator_api import AUTH, SHARD, call
from tests.test_shard import Client, features_frames

# -- control plane ------------------------------------------------------------------------------


def test_registration_needs_the_shards_own_credential(coordinator_url):
    register = f"{coordinator_url}/v1/register"
    assert call(register, SHARD)[0] == 401  # no credential
    assert call(register, SHARD, token="forged")[0] == 401
    assert call(register, SHARD, token=AUTH.shard_token("another-shard"))[0] == 401  # not bound to s1
    assert call(register, SHARD, token=AUTH.shard_token("s1"))[0] == 200
    # hijack: the same id pointing elsewhere, without s1's credential, changes nothing
    status, _ = call(register, {**SHARD, "url": "ws://127.0.0.1:6666"}, token=AUTH.shard_token("x"))
    assert status == 401
    status, body = call(f"{coordinator_url}/v1/route?language=en&zone=a")
    assert status == 200 and [c["url"] for c in body["candidates"]] == ["ws://127.0.0.1:9"]
    # heartbeats are authenticated too: nobody can keep a shard alive or inflate its load
    beat = {"shard_id": "s1", "sessions": 3}
    assert call(f"{coordinator_url}/v1/heartbeat", beat)[0] == 401
    assert call(f"{coordinator_url}/v1/heartbeat", beat, token=AUTH.shard_token("s1"))[0] == 200


@pytest.mark.parametrize(
    "field, value",
    [
        ("url", 123),
        ("url", "http://127.0.0.1:9"),
        ("url", "ws://127.0.0.1"),  # no port
        ("url", "ws://127.0.0.1:9/elsewhere"),
        ("zone", None),
        ("zone", ["a"]),
        ("capacity", 0),
        ("capacity", "64"),
        ("pid", -5),
        ("stage", "enc_c"),
        ("shard_id", "x" * 500),
    ],
)
def test_registration_values_are_typed_and_bounded(coordinator_url, field, value):
    body = {**SHARD, field: value}
    status, answer = call(f"{coordinator_url}/v1/register", body, token=AUTH.shard_token(str(body["shard_id"])))
    assert status == 400 and field in answer["error"], answer
    status, answer = call(f"{coordinator_url}/v1/pools")
    assert status == 200 and answer["pools"][0]["shards"] == []  # nothing registered, nothing broken


def test_heartbeats_with_nan_or_infinity_are_refused_and_routing_survives(coordinator_url):
    assert call(f"{coordinator_url}/v1/register", SHARD, token=AUTH.shard_token("s1"))[0] == 200
    for raw in (
        b'{"shard_id": "s1", "queue_delay_s": NaN}',
        b'{"shard_id": "s1", "queue_delay_s": Infinity}',
        b'{"shard_id": "s1", "final_p99_ms": -Infinity}',
        b'{"shard_id": "s1", "sessions": -1}',
        b'{"shard_id": "s1", "sessions": 1e300}',
        b'{"shard_id": ["s1"]}',
    ):
        status, answer = call(f"{coordinator_url}/v1/heartbeat", raw=raw, token=AUTH.shard_token("s1"))
        assert status in (400, 401), (raw, status, answer)
    status, body = call(f"{coordinator_url}/v1/route?language=en")
    assert status == 200 and body["candidates"][0]["shard_id"] == "s1"
    assert call(f"{coordinator_url}/v1/route?language=" + "x" * 300)[0] == 400


def test_pools_show_addresses_and_pids_only_to_admins(coordinator_url):
    assert call(f"{coordinator_url}/v1/register", {**SHARD, "pid": 4242}, token=AUTH.shard_token("s1"))[0] == 200
    shard = call(f"{coordinator_url}/v1/pools")[1]["pools"][0]["shards"][0]
    assert shard["shard_id"] == "s1" and "url" not in shard and "pid" not in shard
    shard = call(f"{coordinator_url}/v1/pools", token="test-admin-token")[1]["pools"][0]["shards"][0]
    assert shard["url"] == "ws://127.0.0.1:9" and shard["pid"] == 4242
    # odd admin tokens and odd bodies are 401 / 400 / 404, never 500
    assert call(f"{coordinator_url}/v1/scale", {"pool": "tiny.en", "replicas": 1}, token="é")[0] == 401
    status, _ = call(f"{coordinator_url}/v1/scale", {"pool": ["tiny.en"], "replicas": 1}, token="test-admin-token")
    assert status == 404
    status, _ = call(f"{coordinator_url}/v1/drain", {"shard_id": ["s1"]}, token="test-admin-token")
    assert status == 404


# -- shards -------------------------------------------------------------------------------------


def _stage_url(cluster, stage: str) -> str:
    return next(s["url"] for s in cluster.describe() if s["role"] == stage) + "/v1/stage"


def _stage0(cluster) -> str:
    return cluster.stage0_urls("tiny.en")[0] + "/v1/stream"


def test_stage_calls_need_the_stage_credential(shards):
    async def main():
        async with aiohttp.ClientSession() as http:
            for token in (None, "forged", AUTH.shard_token("x")):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(_stage_url(shards, "dec"), headers=headers)
                assert refused.value.status == 401

    asyncio.run(main())


def test_a_bad_stage_request_fails_alone(shards, tiny_int8_recognizer, real_manifest):
    """Malformed decoder requests interleaved with real ones: every request gets an answer, the
    real ones their text."""
    rec = tiny_int8_recognizer
    entry = next(e for e in real_manifest if e.language == "en" and e.duration_s and e.duration_s < 6)
    audio = rec.runtime.encode(rec.features(load_audio(entry.file)))
    d = audio.shape[-1]
    bad_tensors = [
        pack({"audio": np.zeros((1, 10, d + 1), np.float32)}),  # wrong width
        pack({"audio": np.zeros((1, 5000, d), np.float32)}),  # longer than 30 s
        pack({"audio": np.full((1, 10, d), np.nan, np.float32)}),
        {"audio": {"dtype": "float32", "shape": [1, -3, d], "data": b""}},
        {"audio": {"dtype": "float32", "shape": "big", "data": b""}},
        {"audio": 7},
    ]
    bad_meta = [{"rev": "x"}, {"audio_s": float("nan")}, {"language": "xx"}, {"key": ["k"]}]

    async def main():
        headers = {"Authorization": f"Bearer {AUTH.stage_token()}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            ws = await http.ws_connect(_stage_url(shards, "dec"), max_msg_size=p.MAX_STAGE_FRAME_BYTES)
            await ws.send_bytes(p.encode(p.StageRequest("alone", "tiny.en", "dec", 30000, pack({"audio": audio}))))
            alone = p.decode((await ws.receive(timeout=60)).data, max_bytes=p.MAX_STAGE_FRAME_BYTES)
            requests = []
            for i in range(4):
                requests.append(("good", p.StageRequest(f"g{i}", "tiny.en", "dec", 30000, pack({"audio": audio}))))
                for j, tensors in enumerate(bad_tensors):
                    requests.append(("bad", p.StageRequest(f"b{i}-{j}", "tiny.en", "dec", 30000, tensors)))
                for j, meta in enumerate(bad_meta):
                    tensors = pack({"audio": audio})
                    requests.append(("bad", p.StageRequest(f"m{i}-{j}", "tiny.en", "dec", 30000, tensors, meta=meta)))
            for _, request in requests:
                await ws.send_bytes(p.encode(request))
            answers = {}
            while len(answers) < len(requests):
                frame = p.decode((await ws.receive(timeout=60)).data, max_bytes=p.MAX_STAGE_FRAME_BYTES)
                answers[frame.req_id] = frame
            await ws.close()
            return alone, requests, answers

    alone, requests, answers = asyncio.run(main())
    expected = rec.tokenizer.decode(np.frombuffer(alone.tensors["tokens"]["data"], np.int64).tolist())
    assert len(expected.split()) >= 3
    for kind, request in requests:
        answer = answers[request.req_id]
        if kind == "good":
            assert isinstance(answer, p.StageResponse), answer
            tokens = np.frombuffer(answer.tensors["tokens"]["data"], np.int64).tolist()
            assert rec.tokenizer.decode(tokens) == expected
        else:
            assert isinstance(answer, p.Error) and answer.code == p.E_FIELD, (request.req_id, answer)


async def _session(url: str, device_id: str = "dev-a", token: str | None = None, **hello) -> tuple:
    http = aiohttp.ClientSession()
    ws = await http.ws_connect(url)
    token = edge_token(device_id) if token is None else token
    await ws.send_bytes(
        p.encode(p.Hello(device_id=device_id, token=token, language="en", feature_spec=DEFAULT_SPEC.to_dict(), **hello))
    )
    reply = p.decode((await ws.receive(timeout=30)).data)
    return http, ws, reply


async def _close(http, ws) -> None:
    await ws.close()
    await http.close()


def test_streams_need_a_device_token_and_sessions_stay_with_their_device(shards):
    url = _stage0(shards)

    async def main():
        out = {}
        for name, device, token in (
            ("none", "dev-a", ""),
            ("forged", "dev-a", "dev-a.9999999999.00"),
            ("other device's", "dev-a", edge_token("dev-b")),
            ("expired", "dev-a", AUTH.device_token("dev-a", ttl_s=1, now=time.time() - 10)),
        ):
            http, ws, reply = await _session(url, device, token)
            closed = (await ws.receive(timeout=10)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            out[name] = (reply, closed)
            await _close(http, ws)
        # a session belongs to the device that opened it: another device cannot take it over
        http, ws, welcome = await _session(url, "dev-a", session_id="victim-session")
        assert isinstance(welcome, p.Welcome)
        thief = await _session(url, "dev-b", session_id="victim-session")
        out["stolen session"] = (thief[2], True)
        await _close(*thief[:2])
        # the victim's session still works
        await ws.send_bytes(p.encode(p.Ping(nonce=7)))
        out["victim"] = p.decode((await ws.receive(timeout=10)).data)
        await _close(http, ws)
        return out

    out = asyncio.run(main())
    for name in ("none", "forged", "other device's", "expired", "stolen session"):
        reply, closed = out[name]
        assert isinstance(reply, p.Error) and reply.code == p.E_AUTH and closed, (name, reply)
    assert out["expired"][0].message.endswith("expired")
    assert out["victim"] == p.Pong(nonce=7)


def test_silent_connections_and_idle_sessions_are_closed(shards):
    url = _stage0(shards)

    async def main():
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url)  # never says HELLO
            started = time.monotonic()
            error = p.decode((await ws.receive(timeout=10)).data)
            closed = (await ws.receive(timeout=10)).type
            no_hello = (error, closed, time.monotonic() - started)
            ws = await http.ws_connect(url)  # PINGs, but never HELLO: the deadline holds
            started, reply = time.monotonic(), None
            while not isinstance(reply, p.Error) and time.monotonic() - started < 10:
                await ws.send_bytes(p.encode(p.Ping(nonce=1)))
                msg = await ws.receive(timeout=10)
                reply = p.decode(msg.data)
                await asyncio.sleep(0.3)  # the client's pace between pings, not a synchronisation
            pinging = (reply, time.monotonic() - started)
        http, ws, welcome = await _session(url, "dev-idle")
        assert isinstance(welcome, p.Welcome)
        error = p.decode((await ws.receive(timeout=15)).data)  # says nothing after HELLO
        idle = (error, (await ws.receive(timeout=10)).type)
        await _close(http, ws)
        return no_hello, pinging, idle

    (error, closed, waited), (ping_error, ping_waited), (idle_error, idle_closed) = asyncio.run(main())
    assert ping_error.code == p.E_TIMEOUT and "no HELLO" in ping_error.message and ping_waited < 8
    assert error.code == p.E_TIMEOUT and "no HELLO" in error.message and 1.5 < waited < 8
    assert closed in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert idle_error.code == p.E_TIMEOUT and "idle" in idle_error.message
    assert idle_closed in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


def test_hostile_features_are_refused_before_they_cost_memory(shards, real_manifest):
    url = _stage0(shards)
    entry = next(e for e in real_manifest if e.language == "en" and e.duration_s and e.duration_s < 6)
    raw = log_mel(load_audio(entry.file))

    def features(**kw) -> p.Features:
        base = {"utt": 0, "seq": 0, "start": 0, "dtype": "int8", "scale": 0.05, "shape": [80, 10]}
        return p.Features(**{**base, "payload": bytes(800), **kw})

    bomb = zlib.compress(bytes(64 * 1024 * 1024), 9)  # 64 MB of zeros in ~64 kB
    cases = {
        "zip bomb, honest shape": features(shape=[80, 800_000], codec="zlib", payload=bomb[:60_000]),
        "zip bomb, small shape": features(codec="zlib", payload=bomb[:60_000]),
        "huge shape": features(shape=[80, 2**62], payload=b""),
        "negative shape": features(shape=[80, -1], payload=b""),
        "NaN scale": features(scale=float("nan")),
        "infinite offset": features(offset=float("inf")),
        "zero scale": features(scale=0.0),
        "float16 NaN payload": features(dtype="float16", payload=np.full(800, np.nan, np.float16).tobytes()),
    }

    async def main():
        http, ws, welcome = await _session(url, "dev-hostile")
        assert isinstance(welcome, p.Welcome)
        c = Client(ws)
        codes = {}
        for name, frame in cases.items():
            await c.send(frame)
            codes[name] = (await c.recv(timeout=10)).code
        # an EOU for an utterance with no frames gets an (empty) FINAL at once
        await c.send(p.EndOfUtterance(utt=40, last_seq=-1))
        empty = await c.recv(timeout=10)
        # at most 4 utterances open at once; a fifth is refused until one ends
        for utt in range(1, 5):
            await c.send(features(utt=utt, payload=bytes(800)))
        await c.send(features(utt=5, payload=bytes(800)))
        too_many = await c.recv(timeout=10)
        for utt in range(1, 5):
            await c.send(p.EndOfUtterance(utt=utt, last_seq=0))
        # after all that, the session still recognises speech
        for frame in features_frames(raw, 6):
            await c.send(frame)
        final = None
        while final is None or final.utt != 6:
            final, _ = await c.recv_until(p.Final, timeout=60)
        await _close(http, ws)
        return codes, empty, too_many, final

    codes, empty, too_many, final = asyncio.run(main())
    assert codes == {
        "zip bomb, honest shape": p.E_TOO_LARGE,
        "zip bomb, small shape": p.E_FIELD,
        "huge shape": p.E_TOO_LARGE,
        "negative shape": p.E_FIELD,
        "NaN scale": p.E_FIELD,
        "infinite offset": p.E_FIELD,
        "zero scale": p.E_FIELD,
        "float16 NaN payload": p.E_FIELD,
    }
    assert isinstance(empty, p.Final) and empty.utt == 40 and empty.text == ""
    assert isinstance(too_many, p.Error) and too_many.code == p.E_STATE and "open" in too_many.message
    assert final.utt == 6 and final.text


def test_one_device_cannot_squat_a_shard(shards):
    url = _stage0(shards)

    async def main():
        opened, replies = [], []
        for _ in range(9):
            http, ws, reply = await _session(url, "dev-squat")
            opened.append((http, ws))
            replies.append(reply)
        other = await _session(url, "dev-other")
        for pair in [*opened, other[:2]]:
            await _close(*pair)
        return replies, other[2]

    replies, other = asyncio.run(main())
    assert all(isinstance(r, p.Welcome) for r in replies[:8])
    assert isinstance(replies[8], p.Error) and replies[8].code == p.E_OVERLOAD and replies[8].retryable
    assert isinstance(other, p.Welcome)  # other devices are still served


def test_half_open_connections_are_closed(shards):
    host, port = shards.stage0_urls("tiny.en")[0].removeprefix("ws://").split(":")
    sockets = []
    for _ in range(50):
        s = socket.create_connection((host, int(port)), timeout=5)
        sockets.append(s)
    sockets[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    deadline = time.monotonic() + p.IDLE_CONNECTION_S + 10
    closed = 0
    for s in sockets:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            closed += s.recv(1) == b""
        except TimeoutError:
            pass
        s.close()
    assert closed == len(sockets)
    status = json.loads(aiohttp_get(f"http://{host}:{port}/healthz"))
    assert status["status"] == "ok"


def aiohttp_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def test_running_out_of_file_descriptors_does_not_flood_the_log(tmp_path, tiny_artifacts):
    """A shard at its open-file limit reports failed accepts at a bounded rate and serves again once
    connections go away (before: ~50 000 log lines in 5 s)."""
    import resource
    import subprocess

    from splitasr.cloud.processes import ShardSpec, ready_info, shard_command
    from tests.cluster import wait_until

    ready, log_file = tmp_path / "ready.json", tmp_path / "shard.log"
    cmd = shard_command(ShardSpec("tiny.en", "dec", int8=True), ready)

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    with open(log_file, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=low_limit)
    try:
        port = wait_until(lambda: ready_info(proc, ready, log_file, "dec shard"), 120, "shard ready")["port"]
        # more connections than the shard has descriptors: a slow shard leaves some in the kernel's
        # backlog for a while (a connect may time out then), so keep going past a few timeouts
        sockets, failures = [], 0
        while len(sockets) < 400 and failures < 5:
            try:
                sockets.append(socket.create_connection(("127.0.0.1", port), timeout=1))
            except OSError:
                failures += 1
        assert len(sockets) > 200, len(sockets)  # past the limit: the kernel queues what the shard cannot accept
        wait_until(lambda: "Too many open files" in log_file.read_text(), 30, log_file.read_text()[-3000:])
        for s in sockets:
            s.close()
        health = wait_until(lambda: aiohttp_get(f"http://127.0.0.1:{port}/healthz"), 30, "healthz again")
        assert json.loads(health)["status"] == "ok"
        exhausted = [line for line in log_file.read_text().splitlines() if "Too many open files" in line]
        assert 1 <= len(exhausted) <= 5, len(exhausted)
    finally:
        proc.terminate()
        proc.wait(30)


def test_malformed_http_requests_are_logged_at_a_bounded_rate(shards):
    """aiohttp logs each request its parser refuses with a traceback at ERROR; a shard logs them
    once per interval with a count instead (300 over-long request lines: at most one line)."""
    shard = next(s for s in shards.describe() if s["role"] == "enc_a")
    host, port = shard["url"].removeprefix("ws://").split(":")
    log_file = Path(shard["log"])
    before = log_file.read_text()
    for _ in range(300):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
            assert b" 400 " in s.recv(100)
    health = aiohttp_get(shard["url"].replace("ws://", "http://") + "/healthz")
    assert json.loads(health)["status"] == "ok"
    new = log_file.read_text()[len(before) :]
    assert "Traceback" not in new
    reports = [line for line in new.splitlines() if "malformed HTTP request" in line]
    assert 1 <= len(reports) <= 2, new[-2000:]


def test_bad_request_log_limiter_reports_once_per_interval_with_a_count():
    import logging

    from splitasr.shared.limits import BadRequestLogLimiter

    now = [0.0]
    limiter = BadRequestLogLimiter(interval_s=10, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, msg, ("127.0.0.1",), None)

    passed = [limiter.filter(record("Error handling request from %s")) for _ in range(50)]
    assert passed == [True] + [False] * 49
    now[0] = 10.5
    first = record("Error handling request from %s")
    assert (
        limiter.filter(first)
        and first.levelname == "WARNING"
        and first.getMessage().endswith("(50 since the last report)")
    )
    assert limiter.filter(record("something else"))  # other records pass untouched


def test_a_device_sending_audio_faster_than_allowed_is_refused_and_told_when_to_retry(shards):
    """Features for 40 s of audio sent at once to a shard allowing 2x real time after a 10 s burst:
    the burst passes, then frames are refused with a retryable `overloaded` and a retry_after_ms."""
    mel = np.zeros((80, 100), np.float32)  # 1 s of features per frame message

    async def main():
        http, ws, reply = await _session(_stage0(shards), "dev-fast")
        assert isinstance(reply, p.Welcome) and reply.limits["max_audio_rate"] == 2.0
        client, refused = Client(ws), []
        for seq in range(40):
            await client.send(features_frame(mel, seq // 20, seq % 20, (seq % 20) * 100, "int8"))
            await client.send(p.Ping(nonce=seq))
            pong, seen = await client.recv_until(p.Pong, timeout=30)
            refused += [(seq, f) for f in seen if isinstance(f, p.Error)]
            if seq % 20 == 19:
                await client.send(p.EndOfUtterance(utt=seq // 20, last_seq=19))
        await _close(http, ws)
        return refused

    refused = asyncio.run(main())
    assert refused, "40 s of audio at once passed the limit"
    first, error = refused[0]
    assert 9 <= first <= 20, first  # the burst, plus what the rate refilled meanwhile
    assert error.code == p.E_OVERLOAD and error.retryable and 0 < error.retry_after_ms <= 60_000
    assert "faster than 2x real time" in error.message


def test_an_utterance_longer_than_the_audio_burst_gets_a_typed_error_and_the_session_goes_on(shards, tiny_artifacts):
    """An encoder-A edge charges a whole utterance at its EOU: more than the 10 s burst can never
    pass, so it is refused as too large (not an untyped crash of the connection), and the session
    still answers the next EOU."""

    async def main():
        http, ws, reply = await _session(_stage0(shards), "dev-long", split="enc_a", encoder=tiny_artifacts.version)
        assert isinstance(reply, p.Welcome), reply
        answers = []
        for eou in (p.EndOfUtterance(utt=0, last_seq=-1, frames=1200), p.EndOfUtterance(utt=1, last_seq=-1, frames=0)):
            await ws.send_bytes(p.encode(eou))
            answers.append(p.decode((await ws.receive(timeout=30)).data))
        await _close(http, ws)
        return answers

    too_long, empty = asyncio.run(main())
    assert isinstance(too_long, p.Error) and too_long.code == p.E_TOO_LARGE and "burst" in too_long.message
    assert isinstance(empty, p.Final) and empty.utt == 1


def test_token_bucket_with_a_fake_clock():
    from splitasr.shared.limits import TokenBucket

    now = [0.0]
    bucket = TokenBucket(rate=10, burst=30, clock=lambda: now[0])
    assert bucket.take(30) == 0 and bucket.take(5) == 0.5  # empty: 5 more tokens take half a second
    now[0] = 0.5
    assert bucket.take(5) == 0
    now[0] = 100.0
    assert bucket.take(30) == 0 and bucket.take(1) == 0.1  # saved up to the burst, no more
    assert bucket.take(31) == float("inf")  # never: more than the burst


def test_the_edge_paces_itself_to_the_shards_audio_limit(shards, tmp_path):
    """A long-form stream of 30-60 s sent as fast as the edge can: it keeps under the shard's
    announced rate after the burst, so nothing is refused and every utterance gets its FINAL (without
    the pacing, frames past 10 s + 2x the elapsed time are refused and the edge has to move)."""
    from splitasr.edge.agent import AgentOptions, EdgeAgent
    from splitasr.edge.audio_in import file_source
    from splitasr.shared.longform import build_streams

    streams = build_streams(tmp_path, count=6, per_stream=5)
    stream = next(s for s in streams if 30 < s.utterances[-1].end_s < 60)
    options = AgentOptions(shards=(_stage0(shards),), device_id="dev-pacer", language="en")
    report = asyncio.run(EdgeAgent(options).run(file_source(stream.path, realtime=False)))
    assert report.reconnects == 0  # no `overloaded` refusal made it move
    assert len(report.finals) == report.utterances >= 3


def test_client_back_off_is_jittered_bounded_and_never_longer_than_asked():
    import random

    from splitasr.shared.limits import Backoff, jittered

    rng = random.Random(3)
    firsts = [Backoff(0.05, 2.0, rng=rng).next() for _ in range(200)]  # 200 edges that lost the same shard
    assert all(0.025 <= w <= 0.05 for w in firsts) and len({round(w, 6) for w in firsts}) > 150  # spread out
    backoff = Backoff(0.05, 2.0, rng=rng)
    sequence = [backoff.next() for _ in range(10)]
    caps = [min(0.05 * 2**i, 2.0) for i in range(10)]
    assert all(cap / 2 <= w <= cap for w, cap in zip(sequence, caps, strict=True)), sequence
    assert all(0.8 <= jittered(1.0, spread=0.2, rng=rng) <= 1.0 for _ in range(100))  # heartbeats: never late
    with pytest.raises(ValueError):
        Backoff(0, 1)


def test_lone_surrogates_are_signed_and_refused_without_a_crash(coordinator_url):
    """JSON may escape half of a surrogate pair ("\\ud83d"): it decodes to a str that UTF-8 cannot
    encode. Signing takes any str; the schemas refuse such names with a 400, not a 500 (the fuzzer
    hit it in one CI run, when its seed still came from the per-process str hash)."""
    assert AUTH.shard_token("\ud83d") != AUTH.shard_token("\ud83e")
    raw = json.dumps({**SHARD, "shard_id": "\ud83d"}).encode()
    assert b"\\ud83d" in raw
    status, body = call(f"{coordinator_url}/v1/register", raw=raw, token=AUTH.shard_token("s1"))
    assert status == 400 and "shard_id" in body["error"], body
