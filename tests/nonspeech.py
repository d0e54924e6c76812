"""Twelve kinds of non-speech sound, synthesised deterministically at 16 kHz (2.5 s each).

Tones, a chord, a melody, a siren, beeps, white/pink/brown noise, mains hum, knocks, keyboard-like
clicks: none of them may yield text offline or a FINAL when streamed.
"""

from __future__ import annotations

import numpy as np

RATE = 16000


def _t(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * RATE)) / RATE


def _noise(color: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(int(seconds * RATE))
    if color == "white":
        return white
    spectrum = np.fft.rfft(white)
    f = np.maximum(np.fft.rfftfreq(white.size, 1 / RATE), 1.0)
    shaped = spectrum / (np.sqrt(f) if color == "pink" else f)
    return np.fft.irfft(shaped, n=white.size)


def _impulses(seconds: float, times: list[float], decay_s: float, freq: float, rng) -> np.ndarray:
    out = np.zeros(int(seconds * RATE))
    n = int(0.25 * RATE)
    env = np.exp(-np.arange(n) / (decay_s * RATE))
    burst = env * (np.sin(2 * np.pi * freq * np.arange(n) / RATE) + 0.3 * rng.standard_normal(n))
    for t in times:
        i = int(t * RATE)
        out[i : i + n] += burst[: len(out) - i]
    return out


def nonspeech_clips(seconds: float = 2.5, level: float = 0.3) -> dict[str, np.ndarray]:
    """Name -> float32 mono clip at 16 kHz, peak-normalised to ``level``."""
    rng = np.random.default_rng(7)
    t = _t(seconds)
    beeps = np.sin(2 * np.pi * 1000 * t) * ((t % 0.5) < 0.15)
    notes = [262, 294, 330, 349, 392, 440, 494, 523]
    melody = np.sin(2 * np.pi * np.asarray(notes)[(t * 3.2).astype(int) % len(notes)] * t)
    siren_f = 700 + 300 * np.sin(2 * np.pi * 0.8 * t)
    clips = {
        "tone_440": np.sin(2 * np.pi * 440 * t),
        "beeps_1k": beeps,
        "chord": sum(np.sin(2 * np.pi * f * t) for f in (262, 330, 392)),
        "melody": melody,
        "siren": np.sin(2 * np.pi * np.cumsum(siren_f) / RATE),
        "white_noise": _noise("white", seconds, rng),
        "pink_noise": _noise("pink", seconds, rng),
        "brown_noise": _noise("brown", seconds, rng),
        "mains_hum": np.sin(2 * np.pi * 50 * t) + 0.5 * np.sin(2 * np.pi * 100 * t) + 0.2 * np.sin(2 * np.pi * 150 * t),
        "knocks": _impulses(seconds, [0.3, 0.8, 1.3, 1.9], 0.02, 180, rng),
        "clicks": _impulses(seconds, list(np.arange(0.1, seconds - 0.3, 0.17)), 0.003, 3000, rng),
        "silence_with_hiss": 0.01 * rng.standard_normal(t.size),
    }
    return {k: (level * v / np.abs(v).max()).astype(np.float32) for k, v in clips.items()}
