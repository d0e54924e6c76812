"""Offline batch mode: many files in one running batch give the same text as one at a time."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from splitasr.cloud.shard.batch_transcriber import BatchTranscriber
from splitasr.shared.audio import load_audio
from splitasr.shared.errors import AudioError


def _items(paths):
    return [(str(p), (lambda p=p: load_audio(p))) for p in paths]


def test_batch_equals_one_at_a_time_and_duplicates_come_from_cache(tiny_recognizer, manifest, tmp_path):
    english = [e.file for e in manifest if e.language == "en"]  # includes the 32 s clip (two windows)
    duplicate = tmp_path / "copy.flac"
    shutil.copy(english[0], duplicate)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    transcriber = BatchTranscriber(tiny_recognizer, max_batch=8)
    done_s = []
    results = {r.name: r for r in transcriber.run(_items([*english, duplicate, bad]), on_audio_done=done_s.append)}
    assert isinstance(results[str(bad)].error, AudioError)
    for path in english:
        alone = tiny_recognizer.transcribe(load_audio(path))
        assert results[str(path)].transcript.tokens == alone.tokens, path.name
        assert results[str(path)].transcript.text == alone.text
    assert results[str(duplicate)].transcript.text == results[str(english[0])].transcript.text
    stats = transcriber.stats
    assert stats.cache_hits == 1
    assert max(stats.batch_sizes) > 1, "windows of different files shared decoder steps"
    total = sum(len(load_audio(p)) / 16000 for p in [*english, duplicate])
    assert sum(done_s) == pytest.approx(total, rel=1e-6)


def test_batch_cli_on_a_directory(tmp_path, manifest, tiny_artifacts):
    for entry in manifest[:3]:
        shutil.copy(entry.file, tmp_path / entry.file.name)
    (tmp_path / "notes.txt").write_text("not audio, not picked up")
    out = subprocess.run(
        [sys.executable, "-m", "splitasr.cli", "transcribe", "--batch", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 3
    assert "3 files" in out.stderr and "audio-s/s" in out.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "splitasr.cli", "transcribe", "--batch", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode != 0 and "no such file or directory" in missing.stderr
