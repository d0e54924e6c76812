"""The adaptive split point: encoder A on the edge (split ``enc_a``), the choice of ``auto``, and
what the activations look like on the wire."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from splitasr.cloud.faultproxy import FaultProxy
from splitasr.cloud.local_cluster import ChainSpec, LocalCluster
from splitasr.cloud.shard.windows import window_frames, window_mel
from splitasr.edge.agent import AgentOptions, EdgeAgent
from splitasr.edge.audio_in import file_source
from splitasr.shared import protocol as p
from splitasr.shared.auth import edge_token
from splitasr.shared.errors import ProtocolError
from splitasr.shared.features import DEFAULT_SPEC
from splitasr.shared.split import ActivationAssembler, SplitCosts, activation_frames, choose_split, split_latency
from splitasr.shared.wer import WERTally

SLOW_UPLINK = 24_000.0  # bytes/s: a poor mobile uplink, 2x what int8 log-mel needs in real time


def costs(**kw) -> SplitCosts:
    base = dict(
        edge_s_per_window_s=0.004,
        cloud_s_per_window_s=0.006,
        cloud_queue_s=0.0,
        uplink_bytes_s=50e6,
        rtt_s=0.001,
        feature_bytes_per_s=6000.0,
        activation_bytes_per_s=38_400.0,
    )
    return SplitCosts(**(base | kw))


def test_choice_weighs_edge_compute_uplink_and_cloud_queue():
    assert choose_split(costs()) == "enc_a"  # fast link, faster edge
    assert choose_split(costs(uplink_bytes_s=SLOW_UPLINK)) == "features"  # 5 s of activations: ~8 s up
    assert choose_split(costs(edge_s_per_window_s=0.006)) == "features"  # a tie keeps features
    slow_edge = costs(edge_s_per_window_s=0.05, uplink_bytes_s=5e6)
    assert choose_split(slow_edge) == "features"
    assert choose_split(dataclasses.replace(slow_edge, cloud_queue_s=2.0)) == "enc_a"  # a queued cloud
    # speculative finals: the shard starts the FINAL in the endpointer's trailing silence, which
    # hides its encoder A (and the rest) unless it is queued beyond that
    speculating = costs(cloud_rest_s_per_window_s=0.03, overlap_s=0.55)
    assert choose_split(speculating) == "features"
    assert choose_split(dataclasses.replace(speculating, cloud_queue_s=1.0)) == "enc_a"
    # an uplink slower than the features themselves: they queue while speaking
    assert split_latency("features", costs(uplink_bytes_s=3000.0), 4.0) == pytest.approx(4.0 + 0.0005 + 0.036)


def test_activations_round_trip_and_hostile_parts_are_refused():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(1, 350, 384)).astype(np.float32)
    frames = activation_frames(7, hidden)
    assert len(frames) > 1 and all(len(p.encode(f)) <= p.MAX_FRAME_BYTES for f in frames)
    assembler = ActivationAssembler(350, 384)
    out = [assembler.add(p.decode(p.encode(f))) for f in frames]
    assert all(o is None for o in out[:-1])
    np.testing.assert_allclose(out[-1], hidden, atol=2e-3, rtol=1e-3)

    def refused(frame, rows=350) -> str:
        with pytest.raises(ProtocolError) as err:
            ActivationAssembler(rows, 384).add(frame)
        return err.value.code

    first = frames[0]
    nan = np.full((first.shape[0], 384), np.nan, np.float16).tobytes()
    assert refused(dataclasses.replace(first, payload=nan)) == p.E_FIELD
    assert refused(dataclasses.replace(first, index=1)) == p.E_STATE
    assert refused(dataclasses.replace(first, shape=[first.shape[0], 512])) == p.E_FIELD
    assert refused(dataclasses.replace(first, payload=first.payload[:-2])) == p.E_FIELD
    assert refused(dataclasses.replace(first, dtype="float32")) == p.E_FIELD
    assert refused(first, rows=10) == p.E_STATE  # a window of 10 rows is one part, not several


@pytest.mark.parametrize("n", [0, 1, 57, 400, 2999, 3000, 4500])
@pytest.mark.parametrize("mode", ["trimmed", "long", "full"])
def test_window_frames_is_the_window_mel_length(n, mode):
    raw = np.full((DEFAULT_SPEC.n_mels, n), -3.0, np.float32)
    assert window_mel(raw, mode, DEFAULT_SPEC).shape[2] == window_frames(n, mode, DEFAULT_SPEC)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_artifacts):
    with LocalCluster([ChainSpec("tiny.en", enc_a=1, threads=1)], workdir=tmp_path_factory.mktemp("cluster")) as c:
        yield c


def run(url: str, path, split: str, **kw):
    options = AgentOptions(shards=(url,), language="en", split=split, encoder_threads=2, **kw)
    return asyncio.run(EdgeAgent(options).run(file_source(path, realtime=False)))


READ_SPEECH = ("ljspeech", "librivox", "fleurs", "_cv_")  # read sentences and passages of several speakers


def english(manifest, n=8):
    """Real English read speech, every other clip (the digit and aligner clips are elsewhere)."""
    return [e for e in manifest if e.language == "en" and any(k in e.file.name for k in READ_SPEECH)][::2][:n]


@pytest.mark.integration
def test_encoder_a_on_the_edge_gives_the_same_words_for_many_more_uplink_bytes(cluster, real_manifest):
    url = cluster.stage0_urls("tiny.en")[0]
    tallies, rates = {"features": WERTally(), "enc_a": WERTally()}, {}
    for split in tallies:
        sent = speech = 0.0
        for entry in english(real_manifest):
            report = run(url, entry.file, split)
            assert report.splits == [split] and report.duplicate_finals == 0
            assert sorted(f.utt for f in report.finals) == list(range(report.utterances))
            tallies[split].add(entry.text, " ".join(f.text for f in sorted(report.finals, key=lambda f: f.utt)))
            sent, speech = sent + report.bytes_sent, speech + report.speech_s
        rates[split] = sent / speech
    print({k: f"WER {t.wer:.4f} ({t.words} words), {rates[k]:.0f} B/s" for k, t in tallies.items()})
    assert abs(tallies["enc_a"].wer - tallies["features"].wer) <= 0.02  # fp16 activations: a word or two
    assert rates["enc_a"] > 3 * rates["features"]


@pytest.mark.integration
def test_auto_measures_both_links_and_keeps_features_while_finals_are_speculated(cluster, real_manifest):
    """On the slow link the activations would take seconds; on the fast one the shard's speculative
    finals hide its work in the trailing silence. Without them (overlap 0) the measured numbers
    favour encoder A on the edge (2 threads there, 1 at the shard)."""
    url = cluster.stage0_urls("tiny.en")[0]
    host, port = url.removeprefix("ws://").split(":")
    entry = english(real_manifest, 1)[0]
    with FaultProxy(host, int(port)) as proxy:
        proxy.shape(uplink_bytes_s=SLOW_UPLINK, delay_s=0.04)
        slow = run(proxy.url(), entry.file, "auto")
    fast = run(url, entry.file, "auto")
    for name, report in (("slow", slow), ("fast", fast)):
        c = report.split_costs[0]
        print(name, report.splits, {k: round(v, 5) if isinstance(v, float) else v for k, v in c.items()})
        assert report.finals and report.duplicate_finals == 0
    assert slow.splits == ["features"]
    assert slow.split_costs[0]["uplink_bytes_s"] < 2 * SLOW_UPLINK
    assert fast.splits == ["features"], fast.split_costs
    measured = SplitCosts(**{k: v for k, v in fast.split_costs[0].items() if k not in ("url", "split")})
    assert measured.overlap_s == pytest.approx(0.8 - 0.25) and measured.uplink_bytes_s > 10 * SLOW_UPLINK
    assert choose_split(dataclasses.replace(measured, overlap_s=0.0)) == "enc_a"


@pytest.mark.integration
def test_shard_refuses_an_encoder_of_other_weights_and_features_on_an_enc_a_session(cluster, tiny_artifacts):
    import aiohttp

    url = cluster.stage0_urls("tiny.en")[0] + "/v1/stream"

    async def talk(*frames):
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            out = []
            for frame in frames:
                await ws.send_bytes(p.encode(frame))
                out.append(p.decode((await ws.receive(timeout=10)).data))
            return out

    token = edge_token("d", "")
    (answer,) = asyncio.run(talk(p.Hello(device_id="d", token=token, split="enc_a", encoder="base@00000000-s3")))
    assert isinstance(answer, p.Error) and answer.code == p.E_FIELD and "same weights" in answer.message
    version = tiny_artifacts.version
    welcome, err = asyncio.run(
        talk(
            p.Hello(device_id="d", token=token, split="enc_a", encoder=version),
            p.Features(utt=0, seq=0, start=0, dtype="int8", scale=0.05, shape=[80, 1], payload=bytes(80)),
        )
    )
    assert isinstance(welcome, p.Welcome), welcome
    assert isinstance(err, p.Error) and err.code == p.E_STATE
    # EOUs without frames are refused and leave nothing open: the session still takes utterances
    bad = [p.EndOfUtterance(utt=u, last_seq=-1) for u in range(8)]
    answers = asyncio.run(
        talk(
            p.Hello(device_id="d", token=token, split="enc_a", encoder=version),
            *bad,
            *[p.EndOfUtterance(utt=8, last_seq=-1, frames=0)],
        )
    )
    assert all(isinstance(a, p.Error) and a.code == p.E_FIELD for a in answers[1:-1]), answers
    assert isinstance(answers[-1], p.Final) and answers[-1].utt == 8 and answers[-1].text == "", answers[-1]


@pytest.mark.parametrize(
    "answer",
    [
        [1, 2],  # not an object
        {"encoder": "E"},  # fields missing
        {"encoder": "E", "enc_a_s_per_window_s": "fast", "queue_delay_s": 0, "pad_s": 2},
        {"encoder": "E", "enc_a_s_per_window_s": float("nan"), "queue_delay_s": 0, "pad_s": 2},
        {"encoder": "E", "enc_a_s_per_window_s": 0.01, "queue_delay_s": -1, "pad_s": 2},
        {"encoder": "E", "enc_a_s_per_window_s": 0.01, "queue_delay_s": 0, "pad_s": 2, "speculate_after_s": None},
    ],
)
def test_a_hostile_link_answer_leaves_the_split_unmeasured(answer):
    """``auto`` asks the shard for its encoder-A cost: an answer it cannot use is no measurement
    (the split stays as it is), not an exception in the edge."""
    import json
    import types

    import aiohttp
    from aiohttp import web

    async def healthz(request):
        return web.Response(text="ok")

    async def link(request):
        await request.read()
        return web.Response(text=json.dumps(answer), content_type="application/json")

    async def main():
        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_post("/v1/link", link)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/v1/stream"
        agent = EdgeAgent(AgentOptions(shards=(url,), split="auto", device_id="d"))
        agent.encoder = types.SimpleNamespace(version="E", s_per_window_s=0.01, activation_bytes_per_s=38_400.0)
        try:
            async with aiohttp.ClientSession() as http:
                return await agent._measure_link(http, url)
        finally:
            await runner.cleanup()

    assert asyncio.run(main()) is None
