"""Shard processes on 127.0.0.1: health, readiness, metrics, protocol errors, FINALs over the real chain."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import aiohttp
import msgpack
import numpy as np
import pytest

from splitasr.cloud.local_cluster import ChainSpec, LocalCluster
from splitasr.shared import protocol as p
from splitasr.shared.audio import load_audio
from splitasr.shared.auth import edge_token
from splitasr.shared.features import DEFAULT_SPEC, log_mel
from splitasr.shared.quant import features_frame

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_artifacts):
    with LocalCluster([ChainSpec("tiny.en", enc_a=2)], workdir=tmp_path_factory.mktemp("cluster")) as c:
        yield c


def _http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def features_frames(raw: np.ndarray, utt: int, per_frame: int = 20, dtype: str = "int8") -> list[p.Frame]:
    starts = range(0, raw.shape[1], per_frame)
    frames: list[p.Frame] = [
        features_frame(raw[:, start : start + per_frame], utt, seq, start, dtype) for seq, start in enumerate(starts)
    ]
    frames.append(p.EndOfUtterance(utt=utt, last_seq=len(frames) - 1))
    return frames


class Client:
    """A bare protocol client (no VAD, no replay) to drive a stage-0 shard frame by frame."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws

    async def send(self, frame: p.Frame | bytes) -> None:
        await self.ws.send_bytes(frame if isinstance(frame, bytes) else p.encode(frame))

    async def recv(self, timeout: float = 60.0) -> p.Frame:
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        return p.decode(msg.data)

    async def recv_until(self, kind: type, timeout: float = 60.0) -> tuple[p.Frame, list[p.Frame]]:
        seen = []
        while True:
            frame = await self.recv(timeout)
            if isinstance(frame, kind):
                return frame, seen
            seen.append(frame)

    async def hello(self, **kw) -> p.Welcome:
        kw = {"device_id": "test", "token": edge_token(kw.get("device_id", "test")), **kw}
        await self.send(p.Hello(language="en", feature_spec=DEFAULT_SPEC.to_dict(), **kw))
        welcome = await self.recv()
        assert isinstance(welcome, p.Welcome), welcome
        return welcome


async def _with_client(url: str, body):
    async with aiohttp.ClientSession() as s, s.ws_connect(url + "/v1/stream") as ws:
        return await body(Client(ws))


def test_health_ready_metrics(cluster):
    for shard in cluster.describe():
        base = shard["url"].replace("ws://", "http://")
        assert _http(base + "/healthz")[0] == 200
        status, body = _http(base + "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        status, text = _http(base + "/metrics")
        assert status == 200 and "splitasr_stage_seconds" in text and "splitasr_queue_delay_seconds" in text


def test_streamed_final_equals_offline(cluster, tiny_recognizer, manifest):
    url = cluster.stage0_urls("tiny.en")[0]
    entries = [e for e in manifest if e.language == "en" and e.file.name != "en_story.flac"]

    async def body(c: Client):
        await c.hello()
        finals = {}
        for utt, entry in enumerate(entries):
            for frame in features_frames(log_mel(load_audio(entry.file)), utt):
                await c.send(frame)
            final, _ = await c.recv_until(p.Final)
            finals[final.utt] = final
        return finals

    finals = asyncio.run(_with_client(url, body))
    assert sorted(finals) == list(range(len(entries)))
    for utt, entry in enumerate(entries):
        offline = tiny_recognizer.transcribe(load_audio(entry.file)).text
        assert finals[utt].text == offline, entry.file.name
        assert finals[utt].language == "en" and finals[utt].model_version.startswith("tiny.en@")


def test_protocol_errors_keep_the_connection(cluster, manifest):
    url = cluster.stage0_urls("tiny.en")[0]
    raw = log_mel(load_audio(manifest[0].file))

    async def body(c: Client):
        codes = []
        await c.send(p.encode(p.Features(utt=0, seq=0, start=0, dtype="int8", scale=1.0, shape=[80, 0], payload=b"")))
        codes.append((await c.recv()).code)  # before HELLO: unknown session
        await c.hello()
        await c.send(b"\xc1garbage")
        codes.append((await c.recv()).code)
        await c.send(msgpack.packb({"v": 99, "t": "PING"}))
        codes.append((await c.recv()).code)
        await c.send(b"\x00" * (p.MAX_FRAME_BYTES + 10))
        codes.append((await c.recv()).code)
        await c.send(p.Features(utt=0, seq=0, start=0, dtype="int8", scale=1.0, shape=[80, 10], payload=b"x"))
        codes.append((await c.recv()).code)
        await c.send(p.Features(utt=0, seq=5, start=0, dtype="int8", scale=1.0, shape=[80, 1], payload=bytes(80)))
        codes.append((await c.recv()).code)
        # the same connection still recognises speech afterwards
        for frame in features_frames(raw, 1):
            await c.send(frame)
        final, _ = await c.recv_until(p.Final)
        return codes, final

    codes, final = asyncio.run(_with_client(url, body))
    assert codes == [p.E_SESSION, p.E_MALFORMED, p.E_VERSION, p.E_TOO_LARGE, p.E_FIELD, p.E_STATE]
    assert final.utt == 1 and final.text


def test_unknown_language_is_refused(cluster):
    async def body(c: Client):
        await c.send(p.Hello(device_id="t", token=edge_token("t"), language="de"))
        return await c.recv()

    error = asyncio.run(_with_client(cluster.stage0_urls("tiny.en")[0], body))
    assert isinstance(error, p.Error) and error.code == "unknown_language" and "base" in error.message


def test_replayed_utterance_gets_the_same_final(cluster, manifest):
    """At-least-once delivery: frames and EOU sent twice give exactly one recognition, resent FINAL."""
    raw = log_mel(load_audio(manifest[0].file))

    async def body(c: Client):
        await c.hello()
        frames = features_frames(raw, 0)
        for frame in frames:
            await c.send(frame)
        first, _ = await c.recv_until(p.Final)
        for frame in frames:  # replay
            await c.send(frame)
        second, _ = await c.recv_until(p.Final)
        return first, second

    first, second = asyncio.run(_with_client(cluster.stage0_urls("tiny.en")[0], body))
    assert first == second


def test_partials_are_sent_while_speaking(cluster, manifest):
    raw = log_mel(load_audio(manifest[0].file))

    async def body(c: Client):
        await c.hello()
        partials = []
        frames = features_frames(raw, 0, per_frame=10)
        for frame in frames[:-1]:
            await c.send(frame)
            if frame.seq % 10 == 9:  # every 100 frames (1 s) wait for the partial covering it
                partial, _ = await c.recv_until(p.Partial)
                partials.append(partial)
        await c.send(frames[-1])
        final, _ = await c.recv_until(p.Final)
        return partials, final

    partials, final = asyncio.run(_with_client(cluster.stage0_urls("tiny.en")[0], body))
    assert len(partials) >= 3
    assert all(0 <= x.stable <= len(x.text) for x in partials)
    assert final.text.startswith(partials[-1].text[: partials[-1].stable])


def test_failed_downstream_replica_is_retried_on_another(tmp_path, manifest):
    raw = log_mel(load_audio(manifest[0].file))
    with LocalCluster([ChainSpec("tiny.en", enc_a=1, enc_b=2)], workdir=tmp_path) as cluster:
        victim = next(s for s in cluster.shards if s.role == "enc_b")
        victim.proc.kill()
        victim.proc.wait()

        async def body(c: Client):
            await c.hello()
            finals = []
            for utt in range(3):  # round robin would hit the dead replica at least once
                for frame in features_frames(raw, utt):
                    await c.send(frame)
                final, _ = await c.recv_until(p.Final)
                finals.append(final)
            return finals

        finals = asyncio.run(_with_client(cluster.stage0_urls("tiny.en")[0], body))
    assert [f.utt for f in finals] == [0, 1, 2]
    assert len({f.text for f in finals}) == 1 and finals[0].text


def test_whole_chain_shard_gives_the_same_finals_in_one_process(tmp_path, tiny_recognizer, manifest):
    """``--whole-chain``: encoder B and the decoder run inside the stage-0 process (the monolith)."""
    entries = [e for e in manifest if e.language == "en" and e.file.name != "en_story.flac"][:3]
    spec = ChainSpec("tiny.en", enc_a=1, enc_b=0, dec=0, shard_args=("--whole-chain",))
    with LocalCluster([spec], workdir=tmp_path) as mono:
        assert [s.role for s in mono.shards] == ["enc_a"]

        async def body(c: Client):
            await c.hello()
            finals = []
            for utt, entry in enumerate(entries):
                for frame in features_frames(log_mel(load_audio(entry.file)), utt):
                    await c.send(frame)
                final, _ = await c.recv_until(p.Final)
                finals.append(final.text)
            return finals

        finals = asyncio.run(_with_client(mono.stage0_urls("tiny.en")[0], body))
        _, metrics = _http(mono.stage0_urls("tiny.en")[0].replace("ws://", "http://") + "/metrics")
    assert finals == [tiny_recognizer.transcribe(load_audio(e.file)).text for e in entries]
    for stage in ("enc_a", "enc_b", "dec_step"):  # every stage ran here
        assert f'splitasr_stage_seconds_count{{stage="{stage}"}}' in metrics
