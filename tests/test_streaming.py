"""The edge agent against real shard processes: text, exactly-once FINALs, failover, uplink bytes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import soundfile as sf

from splitasr.cloud.local_cluster import ChainSpec, LocalCluster
from splitasr.edge.agent import AgentOptions, EdgeAgent
from splitasr.edge.audio_in import file_source
from splitasr.shared.audio import load_audio
from splitasr.shared.wer import WERTally

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_artifacts):
    with LocalCluster([ChainSpec("tiny.en", enc_a=2)], workdir=tmp_path_factory.mktemp("cluster")) as c:
        yield c


def stream(urls, path, **options):
    agent = EdgeAgent(AgentOptions(shards=tuple(urls), language="en", **options))
    return asyncio.run(agent.run(file_source(path, realtime=False)))


def english(manifest):
    return [e for e in manifest if e.language == "en"]


def test_streamed_text_matches_offline_and_one_final_each(cluster, tiny_recognizer, manifest):
    streamed, offline = WERTally(), WERTally()
    for entry in english(manifest):
        report = stream(cluster.stage0_urls("tiny.en"), entry.file)
        utts = [f.utt for f in report.finals]
        assert utts and sorted(utts) == list(range(len(utts))), "exactly one FINAL per utterance"
        assert report.duplicate_finals == 0
        streamed.add(entry.text, " ".join(f.text for f in sorted(report.finals, key=lambda f: f.utt)))
        offline.add(entry.text, tiny_recognizer.transcribe(load_audio(entry.file)).text)
    print(f"WER streamed {streamed.wer:.4f} offline {offline.wer:.4f} ({streamed.words} words)")
    assert streamed.wer <= offline.wer + 0.01


def test_pause_starts_the_final_before_the_eou(cluster, manifest):
    """The edge's speech-end hint lets stage 0 start a FINAL in the pause; the EOU then reuses it."""
    import re
    import urllib.request

    def counter(name):
        total = 0.0
        for shard in cluster.shards:
            if shard.role == "enc_a":
                text = urllib.request.urlopen(shard.url.replace("ws://", "http://") + "/metrics", timeout=10).read()
                match = re.search(rb"^" + name + rb" ([0-9.e+]+)$", text, re.M)
                total += float(match.group(1)) if match else 0.0
        return total

    hits, started = counter(b"splitasr_cache_hits_total"), counter(b"splitasr_speculative_finals_total")
    entry = english(manifest)[0]
    report = stream(cluster.stage0_urls("tiny.en"), entry.file)
    assert len(report.finals) == 1
    assert counter(b"splitasr_speculative_finals_total") - started >= 1, "no FINAL started in the pause"
    assert counter(b"splitasr_cache_hits_total") - hits >= 1, "the FINAL was computed again"


def test_uplink_bytes(cluster, manifest, tmp_path):
    silent = tmp_path / "silence.wav"
    sf.write(silent, np.zeros(16000 * 3, np.float32), 16000)
    quiet = stream(cluster.stage0_urls("tiny.en"), silent)
    assert quiet.bytes_sent == 0 and quiet.finals == []
    rates = {}
    for dtype in ("int8", "float16", "float32"):
        report = stream(cluster.stage0_urls("tiny.en"), english(manifest)[0].file, dtype=dtype)
        rates[dtype] = report.bytes_per_speech_s
    print("uplink bytes per speech second:", {k: round(v) for k, v in rates.items()})
    assert rates["int8"] <= 8000
    assert rates["int8"] < rates["float16"] < rates["float32"]


def test_int8_features_give_the_same_words_as_fp32(cluster, manifest):
    tallies = {"int8": WERTally(), "float32": WERTally()}
    for entry in english(manifest):
        for dtype, tally in tallies.items():
            report = stream(cluster.stage0_urls("tiny.en"), entry.file, dtype=dtype)
            tally.add(entry.text, " ".join(f.text for f in sorted(report.finals, key=lambda f: f.utt)))
    print(f"WER int8 {tallies['int8'].wer:.4f} fp32 {tallies['float32'].wer:.4f}")
    assert tallies["int8"].errors == tallies["float32"].errors


def test_stage0_killed_mid_utterance_fails_over(tmp_path, manifest):
    """SIGKILL the stage-0 shard the edge is talking to, mid-utterance: reconnect, replay, one FINAL each."""
    entry = next(e for e in manifest if e.file.name == "en_story.flac")
    audio = load_audio(entry.file)
    with LocalCluster([ChainSpec("tiny.en", enc_a=2)], workdir=tmp_path) as cluster:
        first = next(s for s in cluster.shards if s.role == "enc_a")
        urls = [first.url] + [u for u in cluster.stage0_urls("tiny.en") if u != first.url]

        async def source():
            for i in range(0, len(audio), 320):
                if i == 16000 * 5:  # 5 s into the first utterance
                    first.proc.kill()
                    first.proc.wait()
                yield audio[i : i + 320]
                await asyncio.sleep(0)

        agent = EdgeAgent(AgentOptions(shards=tuple(urls), language="en"))
        report = asyncio.run(agent.run(source()))
    assert report.reconnects >= 1
    utts = sorted(f.utt for f in report.finals)
    assert utts == list(range(len(utts))) and len(utts) >= 2
    tally = WERTally()
    tally.add(entry.text, " ".join(f.text for f in sorted(report.finals, key=lambda f: f.utt)))
    assert tally.wer < 0.15
