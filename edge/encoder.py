"""Encoder A on the edge (split ``enc_a``): the same ONNX stage and the same windows as a stage-0 shard."""

from __future__ import annotations

import time

import numpy as np

from splitasr.cloud.shard.runtime import RuntimeOptions, StageRuntime
from splitasr.cloud.shard.windows import SILENCE_LOG_MEL, window_mel
from splitasr.models.stages import ensure_stages
from splitasr.shared.split import ACTIVATION_DTYPE, ENCODER_FRAMES_PER_S

MEASURE_WINDOW_S = 5.0  # the window the edge times itself on (a 3 s utterance plus the 2 s pad)


class EdgeEncoder:
    """Encoder A of ``model`` on this device's CPU, with ``threads`` threads."""

    def __init__(self, model: str, threads: int = 1, int8: bool = False):
        self.artifacts = ensure_stages(model, int8=int8, show_progress=False)
        options = RuntimeOptions(threads=threads, device="cpu", int8=int8)
        self.runtime = StageRuntime(self.artifacts, options, stages=("enc_a",))
        self.spec = self.artifacts.feature_spec
        self.n_state = self.artifacts.manifest["dims"]["n_state"]
        self.s_per_window_s = self.measure()

    @property
    def version(self) -> str:
        return self.artifacts.version

    @property
    def activation_bytes_per_s(self) -> float:
        """ACTIVATIONS bytes per second of window."""
        return ENCODER_FRAMES_PER_S * self.n_state * np.dtype(ACTIVATION_DTYPE).itemsize

    def encode(self, raw: np.ndarray, mode: str, pad_s: float) -> np.ndarray:
        """Encoder A's output (1, rows, n_state) on the window of raw log-mel ``raw`` (as a shard builds it)."""
        (hidden,) = self.runtime.run("enc_a", window_mel(raw, mode, self.spec, pad_s))
        return hidden

    def measure(self, rounds: int = 3) -> float:
        """Seconds of encoder A per second of window (best of ``rounds`` after one warm-up)."""
        frames = int((MEASURE_WINDOW_S - 2.0) * self.spec.frames_per_second)
        raw = np.full((self.spec.n_mels, frames), SILENCE_LOG_MEL, np.float32)
        self.encode(raw, "trimmed", 2.0)
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            self.encode(raw, "trimmed", 2.0)
            best = min(best, time.perf_counter() - started)
        return best / MEASURE_WINDOW_S
