"""The edge agent against real shard processes: text, exactly-once FINALs, failover, uplink bytes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from splitasr.cloud.local_cluster import ChainSpec, LocalCluster
from splitasr.edge.agent import AgentOptions, EdgeAgent
from splitasr.edge.audio_in import file_source
from splitasr.edge.segmenter import SegmenterOptions
from splitasr.shared.audio import load_audio
from splitasr.shared.longform import build_streams
from splitasr.shared.wer import WERTally
from tests.nonspeech import nonspeech_clips

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


def _text(report) -> str:
    return " ".join(f.text for f in sorted(report.finals, key=lambda f: f.utt) if f.text)


def test_longform_real_speech_one_final_per_turn_with_stream_times(cluster, tiny_recognizer, tmp_path):
    """Real clips strung together with 0.5-8 s pauses, 16, 8 and 44.1 kHz stereo: FINAL count, WER, times."""
    streamed, offline = WERTally(), WERTally()
    for s in build_streams(tmp_path, count=3, per_stream=6, split="tune"):
        report = stream(cluster.stage0_urls("tiny.en"), s.path)
        spoken = [f for f in report.finals if f.text]
        expected = s.expected_finals()
        print(f"{s.path.name}: {len(spoken)} FINALs, {expected} expected")
        assert abs(len(spoken) - expected) <= max(1, round(0.1 * expected))
        for f in spoken:  # each FINAL lies on a true utterance (pre-roll and endpoint slack allowed)
            assert any(f.start_s < u.end_s + 0.5 and f.end_s > u.start_s - 0.5 for u in s.utterances), f
            assert f.start_s < f.end_s
        streamed.add(s.reference, _text(report))
        offline.add(s.reference, tiny_recognizer.transcribe(load_audio(s.path)).text)
    print(f"long-form WER streamed {streamed.wer:.3f} offline {offline.wer:.3f} ({streamed.words} words)")
    assert streamed.wer <= offline.wer + 0.03


def test_nonspeech_streams_no_final_text(cluster, tmp_path):
    gap = np.zeros(16000, np.float32)
    audio = np.concatenate([x for clip in nonspeech_clips().values() for x in (clip, gap)])
    path = tmp_path / "nonspeech.wav"
    sf.write(path, audio, 16000)
    for vad in ("silero", "energy"):  # the energy VAD sends utterances; the recogniser must find no speech
        report = stream(cluster.stage0_urls("tiny.en"), path, segmenter=SegmenterOptions(vad=vad))
        assert [f.text for f in report.finals if f.text] == [], vad
        print(f"{vad}: {report.utterances} utterances sent, {report.empty_finals} empty FINALs")


def test_wav_on_a_pipe_gives_the_same_text_as_the_file(cluster, real_manifest, tmp_path):
    entry = next(e for e in real_manifest if e.file.name == "en_ljspeech_LJ001-0011.flac")
    audio = load_audio(entry.file)
    wav = tmp_path / "stereo48k.wav"
    stereo = np.stack([audio, 0.9 * audio], axis=1)
    import soxr

    sf.write(wav, soxr.resample(stereo, 16000, 48000), 48000, subtype="PCM_16")
    url = cluster.stage0_urls("tiny.en")[0]
    base = [sys.executable, "-m", "splitasr.cli", "edge", "--shard", url, "--json", "--no-realtime"]
    from_file = subprocess.run([*base, str(wav)], capture_output=True, text=True, timeout=120, check=True)
    with open(wav, "rb") as f:
        cat = subprocess.Popen(["cat"], stdin=f, stdout=subprocess.PIPE)
        piped = subprocess.run([*base, "-"], stdin=cat.stdout, capture_output=True, text=True, timeout=120)
        cat.stdout.close()
        cat.wait(10)
    assert piped.returncode == 0, piped.stderr

    def texts(out: str) -> list[str]:
        return [json.loads(line)["text"] for line in out.splitlines() if line.startswith("{")]

    assert texts(from_file.stdout) and texts(piped.stdout) == texts(from_file.stdout)
    first = json.loads(piped.stdout.splitlines()[0])
    assert 0.0 <= first["start_s"] < first["end_s"] <= len(audio) / 16000 + 0.1


def test_recorded_edge_frames_replay_to_the_same_finals(cluster, tmp_path):
    """The edge pipeline recorded once and replayed (what benchmarks/capacity.py's cheap clients do)
    gives the same FINALs, at the same stream times, as the live agent."""
    from splitasr.edge.agent import record_frames, replay_frames

    s = build_streams(tmp_path, count=1, per_stream=4, split="tune")[0]
    live = stream(cluster.stage0_urls("tiny.en"), s.path)
    frames = asyncio.run(record_frames(file_source(s.path, realtime=False), AgentOptions(language="en")))
    agent = EdgeAgent(AgentOptions(shards=tuple(cluster.stage0_urls("tiny.en")), language="en"))
    replayed = asyncio.run(agent.run_frames(replay_frames(frames, realtime=False)))

    def by_utterance(report):  # FINALs of a stream read faster than real time may arrive in any order
        return sorted((f.utt, f.text, f.start_s, f.end_s) for f in report.finals)

    assert by_utterance(replayed) == by_utterance(live)
    assert replayed.utterances == live.utterances >= 3 and replayed.bytes_sent == live.bytes_sent
