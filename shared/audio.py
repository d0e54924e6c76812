"""Read audio files of any format soundfile knows into 16 kHz mono float32 (soxr resampling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from splitasr.shared.errors import AudioError


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average the channels of (frames, channels) audio; 1-D audio is returned as is."""
    return audio.mean(axis=1) if audio.ndim == 2 else audio


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate <= 0:
        raise AudioError(f"invalid sample rate {from_rate}")
    if from_rate == to_rate:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sample_rate``; raises :class:`AudioError` with the path."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file {path} not found")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        formats = ", ".join(sorted(sf.available_formats()))
        raise AudioError(f"cannot decode audio file {path}: {exc}. Readable formats: {formats}") from None
    audio = to_mono(audio)
    if audio.size == 0:
        raise AudioError(f"audio file {path} has no samples")
    return resample(audio, rate, sample_rate)
