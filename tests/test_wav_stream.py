"""WAV read front to back (as from a pipe): header parsing, formats, and typed errors for bad input."""

from __future__ import annotations

import asyncio
import io
import struct

import numpy as np
import pytest
import soundfile as sf

from splitasr.edge.audio_in import pcm_stream
from splitasr.edge.wav_stream import read_header
from splitasr.shared.audio import resample, to_mono
from splitasr.shared.errors import AudioError


class Pipe(io.RawIOBase):
    """A non-seekable stream that returns at most 7 bytes per read, like a slow pipe."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        return self._data.read(min(n, 7) if n > 0 else 7)


def wav_bytes(audio: np.ndarray, rate: int, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, subtype=subtype, format="WAV")
    return buf.getvalue()


def collect(stream, **kw) -> np.ndarray:
    async def run():
        return [b async for b in pcm_stream(stream, chunk_s=0.05, **kw)]

    return np.concatenate(asyncio.run(run()))


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT", "PCM_U8"])
def test_formats_on_a_pipe_equal_the_whole_file_resampled(subtype):
    rng = np.random.default_rng(0)
    t = np.arange(48000) / 48000
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)], axis=1)
    stereo += 0.01 * rng.standard_normal(stereo.shape)
    data = wav_bytes(stereo.astype(np.float32), 48000, subtype)
    fmt = read_header(io.BytesIO(data))
    assert (fmt.sample_rate, fmt.channels) == (48000, 2)
    got = collect(Pipe(data))
    whole, _ = sf.read(io.BytesIO(data), dtype="float32")
    want = resample(to_mono(whole), 48000, 16000)
    n = min(len(got), len(want))
    assert abs(len(got) - len(want)) <= 16
    assert np.abs(got[100 : n - 100] - want[100 : n - 100]).max() < 0.01


def test_raw_pcm_needs_no_header():
    pcm = (np.sin(np.arange(16000) / 5) * 8000).astype("<i2").tobytes()
    got = collect(Pipe(pcm), raw_rate=16000)
    assert abs(len(got) - 16000) <= 16


def test_bad_headers_raise_typed_errors():
    good = wav_bytes(np.zeros(100, np.float32), 16000, "PCM_16")
    with pytest.raises(AudioError, match="not a WAV stream"):
        read_header(io.BytesIO(b"OggS" + good[4:]))
    with pytest.raises(AudioError, match="ended inside the WAV header"):
        read_header(io.BytesIO(good[:20]))
    fmt_body = struct.pack("<HHIIHH", 2, 1, 16000, 32000, 2, 4)  # ADPCM
    adpcm = b"RIFF" + struct.pack("<I", 36) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt_body + b"data\0\0\0\0"
    with pytest.raises(AudioError, match="unsupported WAV format"):
        read_header(io.BytesIO(adpcm))
    no_fmt = b"RIFF" + struct.pack("<I", 4) + b"WAVE" + b"data\0\0\0\0"
    with pytest.raises(AudioError, match="before the fmt chunk"):
        read_header(io.BytesIO(no_fmt))
    huge = b"RIFF" + struct.pack("<I", 4) + b"WAVE" + b"LIST" + struct.pack("<I", 1 << 30)
    with pytest.raises(AudioError, match="not a stream this reads"):
        read_header(io.BytesIO(huge))
