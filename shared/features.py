"""Whisper's log-mel features in numpy, on whole files or frame by frame; one spec for edge and cloud."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from splitasr.shared.errors import AudioError, ConfigError


def exact_div(a: int, b: int) -> int:
    if a % b:
        raise ConfigError(f"{a} is not divisible by {b}")
    return a // b


@dataclass(frozen=True)
class FeatureSpec:
    """The log-mel recipe; edge and cloud import the same object so it cannot drift."""

    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    chunk_length_s: int = 30

    @property
    def n_samples(self) -> int:
        return self.chunk_length_s * self.sample_rate

    @property
    def n_frames(self) -> int:
        return exact_div(self.n_samples, self.hop_length)

    @property
    def frames_per_second(self) -> int:
        return exact_div(self.sample_rate, self.hop_length)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> FeatureSpec:
        try:
            return cls(**{k: int(v) for k, v in raw.items()})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad feature spec {raw!r}: {exc}") from exc


DEFAULT_SPEC = FeatureSpec()


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (the Auditory Toolbox's, librosa's default): linear below 1 kHz, log above."""
    hz = np.asarray(hz, np.float64)
    linear = hz / (200.0 / 3)
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


@lru_cache(maxsize=8)
def mel_filters(spec: FeatureSpec = DEFAULT_SPEC) -> np.ndarray:
    """Slaney-normalised mel filterbank from 0 Hz to Nyquist, float32 (n_mels, n_fft // 2 + 1): what
    ``librosa.filters.mel(sr, n_fft, n_mels)`` returns and Whisper's ``mel_filters.npz`` holds
    (triangles between adjacent mel points, each scaled to unit area: 2 / (upper - lower) Hz)."""
    freqs = np.linspace(0.0, spec.sample_rate / 2, spec.n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(spec.sample_rate / 2), spec.n_mels + 2))
    ramps = edges[:, None] - freqs[None, :]
    widths = np.diff(edges)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)  # rounded, then scaled:
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # librosa's order, so the values are bit-equal
    return weights


@lru_cache(maxsize=8)
def _window(n_fft: int) -> np.ndarray:
    return np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann


def _check_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise AudioError(f"expected mono audio (1-D samples), got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise AudioError("audio contains NaN or infinite samples")
    return audio


def _frames_to_log_mel(frames: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(n, n_fft) windowless frames -> raw log10 mel (n_mels, n)."""
    spectrum = np.fft.rfft(frames * _window(spec.n_fft), axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel = mel_filters(spec) @ power.T
    return np.log10(np.maximum(mel, 1e-10)).astype(np.float32)


def _reflect(audio: np.ndarray, pad: int) -> np.ndarray:
    mode = "reflect" if len(audio) > pad else "constant"  # reflect needs more samples than the pad
    return np.pad(audio, (pad, pad), mode=mode)


def log_mel(audio: np.ndarray, spec: FeatureSpec = DEFAULT_SPEC) -> np.ndarray:
    """Raw log10 mel (n_mels, len(audio) // hop) of a whole signal: centred STFT, last frame dropped."""
    audio = _check_audio(audio)
    n_frames = len(audio) // spec.hop_length
    if n_frames == 0:
        return np.zeros((spec.n_mels, 0), np.float32)
    padded = _reflect(audio, spec.n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, spec.n_fft)[:: spec.hop_length][:n_frames]
    return _frames_to_log_mel(frames, spec)


def normalize(raw: np.ndarray) -> np.ndarray:
    """Whisper's per-window clamp at (max - 8) and scaling (x + 4) / 4."""
    if raw.size == 0:
        return raw.astype(np.float32)
    return ((np.maximum(raw, raw.max() - 8.0) + 4.0) / 4.0).astype(np.float32)


class LogMelStream:
    """Incremental :func:`log_mel`: push samples, get each frame once its window is known.

    Concatenated outputs of ``push`` and ``flush`` equal ``log_mel`` of the whole signal. Only the
    samples still needed by future frames are kept.
    """

    def __init__(self, spec: FeatureSpec = DEFAULT_SPEC):
        self.spec = spec
        self._head: np.ndarray | None = None  # first samples, until the start padding can be built
        self._buf = np.zeros(0, np.float32)  # padded signal from frame index self._next onwards
        self._next = 0  # index of the next frame to emit
        self._total = 0  # samples pushed
        self._closed = False

    def _emit(self, available_end: int) -> np.ndarray:
        """Emit frames whose window [i*hop, i*hop + n_fft) lies inside the padded buffer."""
        spec = self.spec
        n = 0 if len(self._buf) < spec.n_fft else (len(self._buf) - spec.n_fft) // spec.hop_length + 1
        n = min(n, max(0, available_end - self._next))
        if n == 0:
            return np.zeros((spec.n_mels, 0), np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(self._buf, spec.n_fft)[:: spec.hop_length][:n]
        out = _frames_to_log_mel(frames, spec)
        self._buf = self._buf[n * spec.hop_length :]
        self._next += n
        return out

    def push(self, samples: np.ndarray) -> np.ndarray:
        if self._closed:
            raise AudioError("LogMelStream: push after flush")
        samples = _check_audio(samples)
        self._total += len(samples)
        pad = self.spec.n_fft // 2
        if self._head is not None or self._next == 0 and len(self._buf) == 0:
            head = samples if self._head is None else np.concatenate([self._head, samples])
            if len(head) <= pad:  # the reflected start needs pad + 1 samples
                self._head = head
                return np.zeros((self.spec.n_mels, 0), np.float32)
            self._head = None
            samples = np.concatenate([head[1 : pad + 1][::-1], head])
        self._buf = np.concatenate([self._buf, samples])
        return self._emit(self._total // self.spec.hop_length)

    def flush(self) -> np.ndarray:
        """Frames left at the end (reflect padding); the stream is closed afterwards."""
        if self._closed:
            return np.zeros((self.spec.n_mels, 0), np.float32)
        self._closed = True
        n_frames = self._total // self.spec.hop_length
        if self._head is not None:  # too short for streaming: fall back to the whole-signal path
            return log_mel(self._head, self.spec)[:, self._next :]
        pad = self.spec.n_fft // 2
        # reflect the signal's tail: needs the last pad + 1 samples, which the buffer holds
        tail = self._buf[len(self._buf) - pad - 1 : -1][::-1] if len(self._buf) > pad else np.zeros(pad, np.float32)
        self._buf = np.concatenate([self._buf, tail])
        return self._emit(n_frames)
