"""Transcript formats (shared/subtitles.py) and ``splitasr transcribe --output-format`` on real speech."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import srt
import webvtt

from splitasr.shared.errors import ConfigError
from splitasr.shared.longform import build_streams
from splitasr.shared.subtitles import cues, render, timestamp, to_srt, to_vtt


@dataclass
class Seg:
    start_s: float
    end_s: float
    text: str


def test_cues_are_ordered_non_empty_and_never_overlap():
    segs = [Seg(5.0, 4.0, "ends before it starts"), Seg(0.0, 6.0, "runs into the next"), Seg(7, 8, "  ")]
    assert cues(segs) == [(0.0, 5.0, "runs into the next"), (5.0, 5.0, "ends before it starts")]
    assert timestamp(3725.0456, ",") == "01:02:05,046" and timestamp(0.0004, ".") == "00:00:00.000"


def test_srt_and_vtt_parse_with_the_reference_libraries(tmp_path):
    segs = [Seg(0.5, 2.25, "Hello there."), Seg(2.25, 3600.5, "A long one --> with an arrow, and ümlauts.")]
    parsed = list(srt.parse(to_srt(segs)))
    assert [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in parsed] == [
        (0.5, 2.25, "Hello there."),
        (2.25, 3600.5, "A long one --> with an arrow, and ümlauts."),
    ]
    (tmp_path / "a.vtt").write_text(to_vtt(segs), encoding="utf-8")
    captions = webvtt.read(str(tmp_path / "a.vtt")).captions
    assert [(c.start, c.end, c.text) for c in captions] == [
        ("00:00:00.500", "00:00:02.250", "Hello there."),
        ("00:00:02.250", "01:00:00.500", "A long one --&gt; with an arrow, and ümlauts."),  # escaped
    ]
    assert json.loads(render("json", " x ", "en", 3.0, segs))["segments"][1]["end"] == 3600.5
    with pytest.raises(ConfigError, match="unknown output format"):
        render("docx", "", "en", 0.0, segs)


@pytest.mark.integration
def test_transcribe_writes_subtitles_whose_cues_sit_at_the_utterances(tmp_path, tiny_int8_recognizer):
    """Long-form real recordings (pauses of 0.5–8 s): with ``--vad`` each cue starts and ends where
    speech does. ``benchmarks/subtitles.py`` on 16 such streams: 90 % of the utterance boundaries
    within 0.5 s of a cue boundary (median 0.07 s), against 35 % (median 0.92 s) from Whisper's
    timestamps, which drift across long pauses; the misses are utterances the VAD does not open
    on and onsets of unvoiced speech that Silero marks late."""
    streams = build_streams(tmp_path / "streams", count=3, per_stream=6, min_clip_s=1.0)
    out = tmp_path / "subs"
    args = ["transcribe", "--int8", "--vad", "--output-format", "all", "--output-dir", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "splitasr.cli", *args, *[str(s.path) for s in streams]],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    distances = []
    for stream in streams:
        stem = out / stream.path.stem
        subs = list(srt.parse(stem.with_suffix(".srt").read_text(encoding="utf-8")))
        captions = webvtt.read(str(stem.with_suffix(".vtt"))).captions
        assert len(subs) == len(captions) > 0
        body = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
        assert [s["text"] for s in body["segments"]] == [c.content for c in subs]
        assert stem.with_suffix(".txt").read_text(encoding="utf-8").strip() == body["text"]
        starts = np.array([c.start.total_seconds() for c in subs])
        ends = np.array([c.end.total_seconds() for c in subs])
        for u in (u for u in stream.utterances if u.text):  # a clip without words has no cue
            distances += [np.abs(starts - u.start_s).min(), np.abs(ends - u.end_s).min()]
    within = float(np.mean(np.array(distances) <= 0.5))
    print(f"{within:.0%} of {len(distances)} utterance boundaries within 0.5 s of a cue boundary")
    assert within >= 0.7


def test_inputs_that_would_write_the_same_subtitle_file_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()  # talk.wav and talk.m4a: both would be out/talk.srt
    args = ["transcribe", "--output-format", "srt", "--output-dir", str(tmp_path / "out")]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "splitasr.cli",
            *args,
            str(tmp_path / "a" / "talk.wav"),
            str(tmp_path / "b" / "talk.m4a"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "several inputs would write talk.*" in run.stderr, run.stderr
