"""Bad inputs raise typed errors with a message that says what to do."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from splitasr.cli.main import main
from splitasr.cloud.shard.recognizer import TranscribeOptions
from splitasr.models import sources
from splitasr.models.stages import ensure_stages
from splitasr.shared.errors import AudioError, ModelNotFoundError, UnknownLanguageError, UnknownModelError


def test_unknown_model():
    with pytest.raises(UnknownModelError, match="known models: base, tiny.en"):
        ensure_stages("large-v9")


def test_missing_model_wheel_names_the_extra(monkeypatch):
    fake = sources.ModelSource("fake", ("splitasr_no_such_wheel",), "splitasr[fake]", "0" * 64, False)
    monkeypatch.setitem(sources.MODELS, "fake", fake)
    with pytest.raises(ModelNotFoundError, match=r"pip install 'splitasr\[fake\]'"):
        sources.locate("fake")


def test_unknown_language(tiny_recognizer):
    audio = np.zeros(16000, np.float32)
    with pytest.raises(UnknownLanguageError, match="English-only.*--model base"):
        tiny_recognizer.transcribe(audio, TranscribeOptions(language="de"))


@pytest.mark.multilingual
def test_unknown_language_multilingual(base_recognizer):
    with pytest.raises(UnknownLanguageError, match="supported: .*de"):
        base_recognizer.transcribe(np.zeros(16000, np.float32), TranscribeOptions(language="xx"))


def test_empty_audio_rejected(tiny_recognizer):
    with pytest.raises(AudioError):
        tiny_recognizer.transcribe(np.zeros(0, np.float32))


def test_cli_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.wav"
    assert main(["transcribe", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "nope.wav" in err and "not found" in err


def test_cli_corrupt_audio(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    assert main(["transcribe", str(bad)]) == 2
    assert "bad.wav" in capsys.readouterr().err


def test_cli_unknown_model_exits_2():
    proc = subprocess.run(
        [sys.executable, "-m", "splitasr.cli", "transcribe", "--model", "huge", "x.wav"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "invalid choice: 'huge'" in proc.stderr


def test_cli_unknown_language_exits_2(tmp_path, capsys, manifest):
    clip = next(e.file for e in manifest if e.language == "en")
    assert main(["transcribe", str(clip), "--language", "zz"]) == 2
    assert "English-only" in capsys.readouterr().err


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "1"])
def test_edge_heartbeat_must_be_a_sane_number_of_seconds(value, capsys):
    from splitasr.edge.agent import AgentOptions
    from splitasr.shared.errors import ConfigError

    with pytest.raises(ConfigError, match="heartbeat_s must be a number of seconds"):
        AgentOptions(shards=("ws://127.0.0.1:9",), heartbeat_s=value)
    if isinstance(value, int | float):
        code = main(["edge", "--shard", "ws://127.0.0.1:9", "--heartbeat-s", str(value), "x.wav"])
        assert code == 2 and "heartbeat_s must be a number of seconds" in capsys.readouterr().err
