"""Signal conditioning on the edge: DC removal and a gentle, speech-gated loudness normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter


@dataclass(frozen=True)
class ConditionerOptions:
    dc_cutoff_hz: float = 20.0
    target_dbfs: float = -20.0  # speech RMS target
    max_gain_db: float = 12.0
    gain_rate: float = 0.02  # fraction of the gap closed per speech block (slow, so words keep their dynamics)
    speech_dbfs: float = -45.0  # blocks louder than this drive the gain
    normalise: bool = True


class Conditioner:
    """Stateful across chunks, so chunking never changes the output."""

    def __init__(self, options: ConditionerOptions = ConditionerOptions(), sample_rate: int = 16000):
        self.o = options
        r = float(np.exp(-2 * np.pi * options.dc_cutoff_hz / sample_rate))
        self._b, self._a = [1.0, -1.0], [1.0, -r]  # one-pole high-pass (DC blocker)
        self._zi = np.zeros(1)
        self.gain_db = 0.0
        self._block = sample_rate // 100

    def process(self, samples: np.ndarray) -> np.ndarray:
        out, self._zi = lfilter(self._b, self._a, samples.astype(np.float64), zi=self._zi)
        if not self.o.normalise:
            return out.astype(np.float32)
        for i in range(0, len(out), self._block):
            block = out[i : i + self._block]
            level = 10 * np.log10(float(np.mean(block * block)) + 1e-12)
            if level > self.o.speech_dbfs:
                wanted = np.clip(self.o.target_dbfs - level, -self.o.max_gain_db, self.o.max_gain_db)
                self.gain_db += self.o.gain_rate * (wanted - self.gain_db)
            block *= 10 ** (self.gain_db / 20)
        return np.clip(out, -1.0, 1.0).astype(np.float32)
