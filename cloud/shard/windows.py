"""Windows for the encoder: where long audio is cut (quiet points, Whisper's seek) and how a window is built."""

from __future__ import annotations

import numpy as np

from splitasr.cloud.shard.guard import WindowMode
from splitasr.shared.features import FeatureSpec, log_mel, normalize


def window_end(
    audio: np.ndarray, start: int, sample_rate: int, max_s: float, search_s: float = 3.0, frame_s: float = 0.1
) -> int:
    """End (exclusive) of the window that begins at ``start``: the end of the audio when it fits in
    ``max_s``, else the lowest-energy ``frame_s`` frame within the last ``search_s`` before the limit."""
    limit = int(max_s * sample_rate)
    if len(audio) - start <= limit:
        return len(audio)
    frame = max(1, int(frame_s * sample_rate))
    lo = start + max(limit - int(search_s * sample_rate), frame)
    region = audio[lo : start + limit]
    n = len(region) // frame
    energy = (region[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    return lo + int(np.argmin(energy)) * frame + frame // 2


def next_start(start: int, end: int, total: int, last_segment_end: int | None, sample_rate: int) -> int:
    """Where the next window begins (Whisper's seek): at ``end``, unless the window was cut inside the
    audio and its last finished segment ends more than a second before the cut; then the next window
    starts at that segment's end, so speech the model left for later near the cut is decoded again."""
    if end >= total or last_segment_end is None:
        return end
    if start + sample_rate <= last_segment_end <= end - sample_rate:
        return last_segment_end
    return end


SILENCE_LOG_MEL = -10.0  # log10 of the 1e-10 floor: what zero samples give
LONG_WINDOW_S = 15.0  # the retry window: long enough that short speech no longer loops (docs/decoding.md)


def audio_log_mel(audio: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Raw log10 mel (mels, len(audio) // hop) of one window of audio, as faster-whisper frames it."""
    return log_mel(np.pad(audio, (0, spec.hop_length)), spec)[:, :-1]


def window_mel(raw: np.ndarray, mode: WindowMode, spec: FeatureSpec, pad_s: float = 2.0) -> np.ndarray:
    """The encoder input (1, mels, T) for raw log10 mel frames of one window; the only place a window is built.

    ``trimmed``: the frames plus ``pad_s`` of silence, clamped/normalised together, T even (≤ 30 s).
    ``long``: the same, with silence up to at least ``LONG_WINDOW_S`` (the guard's retry window).
    ``full``: normalised frames zero-padded to 30 s, exactly faster-whisper's input.
    """
    frames = window_frames(raw.shape[1], mode, spec, pad_s)
    if mode == "full":
        mel = normalize(raw[:, :frames])
        mel = np.pad(mel, ((0, 0), (0, frames - mel.shape[1])))
    else:
        padded = max(frames, raw.shape[1])
        pad = np.full((raw.shape[0], padded - raw.shape[1]), SILENCE_LOG_MEL, np.float32)
        mel = normalize(np.concatenate([raw, pad], axis=1))[:, :frames]
    return np.ascontiguousarray(mel[None], dtype=np.float32)


def window_frames(n: int, mode: WindowMode, spec: FeatureSpec, pad_s: float = 2.0) -> int:
    """Log-mel frames of the window :func:`window_mel` builds on ``n`` raw frames (encoder A gives half)."""
    if mode == "full":
        return spec.n_frames
    fps = spec.frames_per_second
    frames = n + int(pad_s * fps)
    if mode == "long":
        frames = max(frames, int(LONG_WINDOW_S * fps))
    frames = min(frames, spec.n_frames)
    return frames - frames % 2
