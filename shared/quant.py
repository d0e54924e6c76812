"""Compact encodings of raw log10-mel frames for the uplink (int8 with a fixed scale, fp16, fp32)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from splitasr.shared.errors import ProtocolError
from splitasr.shared.protocol import E_FIELD, Features

# Raw log10 mel spans about [-10, 3]; Whisper clamps everything below (max - 8) anyway, and the edge
# normalises loudness, so [-8.35, 4.4] in steps of 0.05 (~0.6 % in power) loses nothing that matters.
INT8_SCALE = 0.05
INT8_OFFSET = -2.0
DTYPES = ("int8", "float16", "float32")


@dataclass(frozen=True)
class Encoded:
    dtype: str
    scale: float
    offset: float
    shape: list[int]
    payload: bytes


def encode_frames(raw: np.ndarray, dtype: str = "int8") -> Encoded:
    """Encode raw log10 mel (n_mels, n) as ``dtype``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    raw = np.asarray(raw, np.float32)
    if dtype == "int8":
        q = np.clip(np.rint((raw - INT8_OFFSET) / INT8_SCALE), -128, 127).astype(np.int8)
        return Encoded("int8", INT8_SCALE, INT8_OFFSET, list(raw.shape), q.tobytes())
    return Encoded(dtype, 1.0, 0.0, list(raw.shape), raw.astype(dtype).tobytes())


def decode_frames(frame: Features, n_mels: int) -> np.ndarray:
    """Raw log10 mel (n_mels, n) float32 from a FEATURES frame; raises ProtocolError if inconsistent."""
    if frame.dtype not in DTYPES:
        raise ProtocolError(E_FIELD, f"FEATURES.dtype {frame.dtype!r} not one of {DTYPES}")
    if len(frame.shape) != 2 or frame.shape[0] != n_mels or not all(isinstance(d, int) and d >= 0 for d in frame.shape):
        raise ProtocolError(E_FIELD, f"FEATURES.shape {frame.shape!r} must be [{n_mels}, frames]")
    itemsize = np.dtype(frame.dtype).itemsize
    if len(frame.payload) != frame.shape[0] * frame.shape[1] * itemsize:
        raise ProtocolError(
            E_FIELD,
            f"FEATURES payload has {len(frame.payload)} bytes, shape needs "
            f"{frame.shape[0] * frame.shape[1] * itemsize}",
        )
    values = np.frombuffer(frame.payload, dtype=frame.dtype).reshape(frame.shape)
    if frame.dtype == "int8":
        return values.astype(np.float32) * np.float32(frame.scale) + np.float32(frame.offset)
    out = values.astype(np.float32)
    if not np.isfinite(out).all():
        raise ProtocolError(E_FIELD, "FEATURES payload has NaN or infinite values")
    return out
