"""End to end offline transcription: the CLI in a real process, int8 stages, long audio windows."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from splitasr.cloud.shard.recognizer import Recognizer, TranscribeOptions
from splitasr.cloud.shard.runtime import RuntimeOptions
from splitasr.cloud.shard.windows import window_end
from splitasr.models.stages import ensure_stages
from splitasr.shared.audio import load_audio
from splitasr.shared.wer import WERTally, normalize_text

pytestmark = pytest.mark.integration


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "splitasr.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_prints_the_right_text(manifest):
    entry = next(e for e in manifest if e.file.name == "en_meeting.flac")
    proc = _cli("transcribe", str(entry.file))
    assert proc.returncode == 0, proc.stderr
    assert normalize_text(proc.stdout) == normalize_text(entry.text)


def test_cli_json_has_timings(manifest):
    entry = next(e for e in manifest if e.language == "en")
    proc = _cli("transcribe", "--json", "--int8", str(entry.file))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["language"] == "en" and out["text"]
    assert set(out["timings_ms"]) >= {"features", "encode", "cross_kv", "decode"}
    assert out["audio_s_per_wall_s"] > 0


def test_cli_eval_reports_wer_per_language(manifest):
    proc = _cli("eval", str(manifest[0].file.parent / "manifest.jsonl"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report["wer"]) == {"en"}  # tiny.en skips the other languages
    assert report["wer"]["en"]["utterances"] == sum(e.language == "en" for e in manifest)
    assert report["wer"]["en"]["wer"] < 0.15


def test_int8_wer_equals_fp32(tiny_recognizer, manifest):
    int8 = Recognizer(ensure_stages("tiny.en", int8=True, show_progress=False), RuntimeOptions(threads=2, int8=True))
    fp32_tally, int8_tally = WERTally(), WERTally()
    for entry in (e for e in manifest if e.language == "en"):
        audio = load_audio(entry.file)
        fp32_tally.add(entry.text, tiny_recognizer.transcribe(audio).text)
        int8_tally.add(entry.text, int8.transcribe(audio).text)
    print(f"WER fp32 {fp32_tally.wer:.4f} int8 {int8_tally.wer:.4f} ({fp32_tally.words} words)")
    assert int8_tally.errors <= fp32_tally.errors + 1


def test_long_real_audio_keeps_the_sentence_near_the_cut(tiny_recognizer, real_manifest):
    """A 35 s reading: the first window is cut near 28 s; the model ends it early, before a sentence
    that runs up to the cut, and the next window starts after its last finished segment (seek)."""
    entry = next(e for e in real_manifest if e.file.name == "en_ljspeech_LJ001-0026_to_0030_concat.flac")
    audio = load_audio(entry.file)
    assert window_end(audio, 0, 16000, tiny_recognizer.max_window_s(TranscribeOptions(), "en")) < len(audio)
    result = tiny_recognizer.transcribe(audio)
    assert len(result.tokens) >= 2
    assert "gothic letter was most often used" in normalize_text(result.text)
    starts = [s.start_s for s in result.segments]
    assert starts == sorted(starts) and result.segments[-1].end_s <= len(audio) / 16000 + 0.01
    tally = WERTally()
    tally.add(entry.reference, result.text)
    assert tally.wer < 0.15


def test_window_end_cuts_at_the_quietest_point():
    import numpy as np

    audio = np.ones(16000 * 40, np.float32)
    audio[16000 * 26 : 16000 * 26 + 1600] = 0.0  # a pause at 26 s, inside the 3 s search region
    end = window_end(audio, 0, 16000, 28.0)
    assert 16000 * 26 <= end <= 16000 * 26 + 1600
    assert window_end(audio, end, 16000, 28.0) == len(audio)
