"""A WAV stream read front to back (a pipe cannot seek): the RIFF header parsed here, then PCM blocks."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from splitasr.shared.errors import AudioError

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
MAX_HEADER_CHUNK = 1 << 20  # a non-audio chunk before "data" larger than this is not a WAV we stream


@dataclass(frozen=True)
class WavFormat:
    sample_rate: int
    channels: int
    bits: int
    is_float: bool

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.bits // 8

    def decode(self, data: bytes) -> np.ndarray:
        """Whole frames of ``data`` as float32 (frames, channels) in [-1, 1]."""
        data = data[: len(data) - len(data) % self.frame_bytes]
        if self.is_float:
            x = np.frombuffer(data, "<f4" if self.bits == 32 else "<f8").astype(np.float32)
        elif self.bits == 8:
            x = (np.frombuffer(data, np.uint8).astype(np.float32) - 128) / 128
        elif self.bits == 24:
            b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
            x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / (1 << 23)
        else:
            x = np.frombuffer(data, f"<i{self.bits // 8}").astype(np.float32) / (1 << (self.bits - 1))
        return x.reshape(-1, self.channels)


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            raise AudioError(f"stdin ended inside the WAV header (wanted {n} bytes, got {len(data)})")
        data += more
    return data


def read_header(stream: BinaryIO) -> WavFormat:
    """Parse RIFF/WAVE up to the start of the ``data`` chunk; the data size is ignored (streams often
    write 0 or 0xFFFFFFFF there), so the audio runs to the end of the stream."""
    riff, _, wave = struct.unpack("<4sI4s", _read_exact(stream, 12))
    if riff not in (b"RIFF", b"RF64") or wave != b"WAVE":
        raise AudioError("stdin is not a WAV stream (no RIFF/WAVE header); for raw PCM pass --raw-rate")
    fmt: WavFormat | None = None
    while True:
        chunk, size = struct.unpack("<4sI", _read_exact(stream, 8))
        if chunk == b"data":
            if fmt is None:
                raise AudioError("WAV stream has its data chunk before the fmt chunk")
            return fmt
        if size > MAX_HEADER_CHUNK:
            raise AudioError(f"WAV chunk {chunk!r} of {size} bytes before the audio; not a stream this reads")
        body = _read_exact(stream, size + size % 2)
        if chunk == b"fmt ":
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == _EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack("<H", body[24:26])[0]
            ok = (tag == _PCM and bits in (8, 16, 24, 32)) or (tag == _FLOAT and bits in (32, 64))
            if not ok or channels < 1 or rate < 1:
                raise AudioError(f"unsupported WAV format (tag {tag}, {bits} bits, {channels} channels, {rate} Hz)")
            fmt = WavFormat(rate, channels, bits, tag == _FLOAT)
