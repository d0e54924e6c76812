"""Where a stream is split between edge and cloud (Neurosurgeon-style): the choice, and encoder A's
activations on the wire.

``features``: the edge sends quantised log-mel while the user speaks; the stage-0 shard runs encoder A.
``enc_a``: the edge keeps its log-mel and runs encoder A itself on the windows the stage-0 shard asks
for (ENCODE), sending fp16 activations (ACTIVATIONS); the shard passes them on to encoder B. The
activations are ~10x the bytes of int8 log-mel, and the transfer happens after the end of speech, so
``enc_a`` pays only on a fast uplink with an edge faster than the cloud's share (or a cloud queue).
``auto``: :func:`choose_split` on measured costs (edge compute, uplink, cloud compute and queue).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from splitasr.shared.errors import ProtocolError
from splitasr.shared.protocol import E_FIELD, E_STATE, MAX_FRAME_BYTES, Activations

SPLITS = ("features", "enc_a")  # what a session runs with (HELLO.split)
EDGE_SPLITS = (*SPLITS, "auto")  # what an edge may be asked for
ACTIVATION_DTYPE = "float16"
ENCODER_FRAMES_PER_S = 50  # Whisper's conv stem halves the 100 log-mel frames per second


def rows_per_frame(n_state: int) -> int:
    """Activation rows in one ACTIVATIONS frame (the edge frame limit, less room for the envelope)."""
    return max(1, (MAX_FRAME_BYTES - 1024) // (n_state * np.dtype(ACTIVATION_DTYPE).itemsize))


def activation_frames(req: int, hidden: np.ndarray) -> list[Activations]:
    """Encoder A's output (1, rows, n_state) as ACTIVATIONS frames of one ENCODE request."""
    rows = np.ascontiguousarray(hidden[0], dtype=ACTIVATION_DTYPE)
    step = rows_per_frame(rows.shape[1])
    parts = [rows[i : i + step] for i in range(0, max(1, rows.shape[0]), step)]
    count = len(parts)
    return [
        Activations(req=req, index=i, count=count, dtype=ACTIVATION_DTYPE, shape=list(r.shape), payload=r.tobytes())
        for i, r in enumerate(parts)
    ]


class ActivationAssembler:
    """The parts of one ENCODE answer, checked as they come: ``add`` returns (1, rows, n_state)
    float32 once the last part is in, None before; ProtocolError for anything inconsistent."""

    def __init__(self, rows: int, n_state: int):
        self.rows, self.n_state = rows, n_state
        self.parts: list[np.ndarray] = []
        self.received = 0

    def add(self, frame: Activations) -> np.ndarray | None:
        count = math.ceil(self.rows / rows_per_frame(self.n_state))
        if frame.dtype != ACTIVATION_DTYPE:
            raise ProtocolError(E_FIELD, f"ACTIVATIONS.dtype {frame.dtype!r}; want {ACTIVATION_DTYPE}")
        if frame.count != count or frame.index != len(self.parts):
            raise ProtocolError(
                E_STATE, f"ACTIVATIONS part {frame.index}/{frame.count}; expected {len(self.parts)}/{count}"
            )
        shape = frame.shape
        if len(shape) != 2 or shape[1] != self.n_state or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ProtocolError(E_FIELD, f"ACTIVATIONS.shape {shape!r} must be [rows, {self.n_state}]")
        if self.received + shape[0] > self.rows:
            raise ProtocolError(E_FIELD, f"ACTIVATIONS carry more than the window's {self.rows} rows")
        itemsize = np.dtype(ACTIVATION_DTYPE).itemsize
        if len(frame.payload) != shape[0] * shape[1] * itemsize:
            raise ProtocolError(E_FIELD, f"ACTIVATIONS payload of {len(frame.payload)} bytes does not match {shape}")
        part = np.frombuffer(frame.payload, ACTIVATION_DTYPE).reshape(shape)
        if not np.isfinite(part).all():
            raise ProtocolError(E_FIELD, "ACTIVATIONS hold NaN or infinite values")
        self.parts.append(part)
        self.received += shape[0]
        if len(self.parts) < count:
            return None
        if self.received != self.rows:
            raise ProtocolError(E_FIELD, f"ACTIVATIONS carry {self.received} rows; the window has {self.rows}")
        return np.concatenate(self.parts)[None].astype(np.float32)


@dataclass(frozen=True)
class SplitCosts:
    """What the choice weighs, measured by the edge (its encoder A, the uplink) and the shard
    (its encoder A, its queue delay). Times in seconds, rates in bytes per second."""

    edge_s_per_window_s: float  # the edge's encoder A time per second of window
    cloud_s_per_window_s: float  # the shard's encoder A time per second of window
    cloud_queue_s: float  # the shard's current queue delay
    uplink_bytes_s: float
    rtt_s: float
    feature_bytes_per_s: float  # FEATURES bytes per second of audio (int8 + zlib)
    activation_bytes_per_s: float  # ACTIVATIONS bytes per second of window
    pad_s: float = 2.0  # silence the shard adds to a window
    cloud_rest_s_per_window_s: float = 0.0  # the shard's encoder B + decoder per second of window
    overlap_s: float = 0.0  # split features: how long before the EOU the shard starts the FINAL
    # (its speculative final begins speculate_after_s into the endpointer's trailing silence)


def split_latency(split: str, c: SplitCosts, utterance_s: float) -> float:
    """Estimated EOU -> the shard's decoded FINAL, for an utterance of ``utterance_s``.

    ``features``: the features were sent while speaking (an uplink slower than audio leaves a
    backlog), and the shard starts the FINAL ``overlap_s`` before the EOU (speculative finals), so
    only the part of its queue and compute beyond that is late. ``enc_a``: nothing starts before
    the EOU; then ENCODE down, encoder A here, the activations up, encoder B and the decoder."""
    window_s = utterance_s + c.pad_s
    bandwidth = max(c.uplink_bytes_s, 1.0)
    rest_s = c.cloud_rest_s_per_window_s * window_s
    if split == "features":
        backlog_s = max(0.0, c.feature_bytes_per_s * utterance_s / bandwidth - utterance_s)
        cloud_s = c.cloud_queue_s + c.cloud_s_per_window_s * window_s + rest_s
        return backlog_s + c.rtt_s / 2 + max(0.0, cloud_s - c.overlap_s)
    if split == "enc_a":
        transfer_s = c.activation_bytes_per_s * window_s / bandwidth
        return c.rtt_s + c.edge_s_per_window_s * window_s + transfer_s + rest_s
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def choose_split(c: SplitCosts, utterance_s: float = 3.0, margin: float = 0.9) -> str:
    """``enc_a`` when it is estimated at under ``margin`` x the latency of ``features`` (which keeps
    partials and a tenth of the uplink, so it wins near-ties), else ``features``."""
    if split_latency("enc_a", c, utterance_s) < margin * split_latency("features", c, utterance_s):
        return "enc_a"
    return "features"
