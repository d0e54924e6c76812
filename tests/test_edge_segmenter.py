"""Endpointing on synthetic signals: silence, bursts separated by pauses, maximum length cuts.

Tone bursts are not speech to Silero VAD (see test_real_speech for it on real recordings), so the
endpointing rules are checked here with the energy detector."""

from __future__ import annotations

import numpy as np
import pytest

from splitasr.edge.segmenter import Audio, End, Segmenter, SegmenterOptions, Start
from splitasr.shared.errors import ConfigError

SR = 16000


def tone(seconds: float, amp: float = 0.3, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silence(seconds: float, noise: float = 1e-4) -> np.ndarray:
    return (np.random.default_rng(int(seconds * 1000)).standard_normal(int(seconds * SR)) * noise).astype(np.float32)


ENERGY = SegmenterOptions(vad="energy")


def run(audio: np.ndarray, options: SegmenterOptions = ENERGY, chunk: int = 321):
    seg = Segmenter(options)
    events = []
    for i in range(0, len(audio), chunk):
        events += seg.push(audio[i : i + chunk])
    events += seg.finish()
    utterances, current = [], None
    for e in events:
        if isinstance(e, Start):
            current = {"start": e.sample, "samples": 0}
        elif isinstance(e, Audio):
            current["samples"] += len(e.samples)
        elif isinstance(e, End):
            current["speech_end"] = e.speech_end_sample
            utterances.append(current)
            current = None
    return utterances


def test_silence_gives_no_utterance():
    assert run(silence(3.0)) == []


def test_two_bursts_two_utterances():
    audio = np.concatenate([silence(1.0), tone(1.5), silence(1.5), tone(1.0), silence(1.5)])
    utts = run(audio)
    assert len(utts) == 2
    (a, b) = utts
    assert abs(a["start"] - int(0.7 * SR)) <= 0.05 * SR  # 0.3 s pre-roll before the onset at 1.0 s
    assert abs(a["speech_end"] - int(2.5 * SR)) <= 0.05 * SR
    assert abs(b["speech_end"] - int(5.0 * SR)) <= 0.05 * SR
    # utterance audio = pre-roll + speech + trailing silence (0.8 s)
    assert abs(a["samples"] - int((0.3 + 1.5 + 0.8) * SR)) <= 0.05 * SR


def test_pause_shorter_than_trailing_silence_does_not_split():
    audio = np.concatenate([silence(0.5), tone(1.0), silence(0.5), tone(1.0), silence(1.2)])
    assert len(run(audio, SegmenterOptions(vad="energy", trailing_silence_s=0.8))) == 1


def test_max_length_cuts_at_the_quiet_point():
    # 11 s of speech with a short dip at 9.2 s; max 10 s, search the last 2 s
    speech = tone(11.0)
    speech[int(9.2 * SR) : int(9.35 * SR)] *= 0.01
    audio = np.concatenate([silence(0.5), speech, silence(1.5)])
    utts = run(audio, SegmenterOptions(vad="energy", max_utterance_s=10.0, cut_search_s=2.0))
    assert len(utts) == 2
    cut = utts[0]["start"] + utts[0]["samples"]
    assert abs(cut - int((0.5 + 9.275) * SR)) <= 0.1 * SR
    assert utts[1]["start"] == cut
    assert sum(u["samples"] for u in utts) >= int(11.0 * SR)  # nothing lost at the cut


def test_bad_options():
    with pytest.raises(ConfigError):
        SegmenterOptions(trailing_silence_s=0.0)
    with pytest.raises(ConfigError):
        SegmenterOptions(max_utterance_s=2.0, cut_search_s=2.0)
    with pytest.raises(ConfigError):
        SegmenterOptions(vad="webrtc")
    with pytest.raises(ConfigError):
        SegmenterOptions(speech_threshold=0.3, silence_threshold=0.4)
