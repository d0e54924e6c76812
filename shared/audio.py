"""Read audio into 16 kHz mono float32 (soxr resampling): what soundfile reads (wav, flac, ogg, mp3,
aiff) through libsndfile, everything else a phone or browser records (m4a/AAC, webm/Opus, mp4, …)
through PyAV's ffmpeg."""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import BinaryIO

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


def load_audio(
    source: str | Path | bytes | BinaryIO, sample_rate: int = 16000, max_s: float | None = None
) -> np.ndarray:
    """Decode a file path, bytes or a binary file object to mono float32 at ``sample_rate``.

    Raises :class:`AudioError` naming the input when it is missing, cannot be decoded, is empty or
    (with ``max_s``) lasts longer than ``max_s`` seconds; that is checked before decoding it all, so
    a small file that decodes to hours of audio (silence compresses well) cannot exhaust memory."""
    if isinstance(source, str | Path):
        name = str(source)
        if not Path(source).is_file():
            raise AudioError(f"audio file {name} not found")
    else:
        name = "the uploaded audio"
        source = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        if max_s is not None:
            info = sf.info(source)
            _check_length(info.frames / info.samplerate, max_s, name)
            if not isinstance(source, str | Path):
                source.seek(0)
        audio, rate = sf.read(source, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        if not isinstance(source, str | Path):
            source.seek(0)
        audio, rate = _decode_av(source, name, exc, max_s)
    audio = to_mono(audio)
    if audio.size == 0:
        raise AudioError(f"{name} has no samples")
    return resample(audio, rate, sample_rate)


def _check_length(seconds: float, max_s: float | None, name: str) -> None:
    if max_s is not None and seconds > max_s:
        raise AudioError(f"{name} lasts more than {max_s:g} s (the limit)")


def _decode_av(
    source: str | Path | BinaryIO, name: str, sf_error: Exception, max_s: float | None = None
) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and the rate, through ffmpeg (PyAV); soundfile's error if both fail."""
    import av

    try:
        with av.open(str(source) if isinstance(source, Path) else source, mode="r") as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise AudioError(f"{name} has no audio stream")
            rate = stream.codec_context.sample_rate
            to_float = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=rate)
            blocks, samples = [], 0
            for frame in itertools.chain(container.decode(stream), [None]):  # None: flush the resampler
                for out in to_float.resample(frame):
                    blocks.append(out.to_ndarray())
                    samples += blocks[-1].shape[1]
                    _check_length(samples / max(rate, 1), max_s, name)  # while decoding, not after
    except (av.FFmpegError, ValueError, IndexError) as exc:
        raise AudioError(
            f"cannot decode {name}: not a format soundfile reads ({sf_error}) nor one ffmpeg decodes ({exc})"
        ) from None
    if not blocks or not rate:
        raise AudioError(f"{name} has no samples")
    return np.concatenate(blocks, axis=1).T, rate
