"""Audio loading: any rate and channel count to 16 kHz mono; typed errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from splitasr.shared.audio import load_audio
from splitasr.shared.errors import AudioError
from tests.conftest import SAMPLES


def test_stereo_22k_is_resampled_and_downmixed():
    path = SAMPLES / "en_train_22k_stereo.flac"
    info = sf.info(str(path))
    assert (info.samplerate, info.channels) == (22050, 2)
    audio = load_audio(path)
    assert audio.ndim == 1 and audio.dtype == np.float32
    assert abs(len(audio) - round(info.frames * 16000 / 22050)) <= 1
    assert 0.3 < np.abs(audio).max() <= 1.0


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="not found") as info:
        load_audio(tmp_path / "missing.wav")
    assert "missing.wav" in str(info.value)


def test_corrupt_file(tmp_path):
    bad = tmp_path / "corrupt.flac"
    bad.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    with pytest.raises(AudioError, match="corrupt.flac") as info:
        load_audio(bad)
    assert "Readable formats" in str(info.value)


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(empty)
