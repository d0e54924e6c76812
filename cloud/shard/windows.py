"""Cut long audio into windows that fit Whisper's 30 s context, at the quietest point near each limit."""

from __future__ import annotations

import numpy as np


def split_windows(
    audio: np.ndarray, sample_rate: int, max_s: float, search_s: float = 3.0, frame_s: float = 0.1
) -> list[tuple[int, int]]:
    """Return (start, end) sample ranges of at most ``max_s`` seconds covering ``audio``.

    A cut falls at the lowest-energy ``frame_s`` frame within the last ``search_s`` seconds
    before the limit, so words are rarely split.
    """
    limit = int(max_s * sample_rate)
    frame = max(1, int(frame_s * sample_rate))
    search = int(search_s * sample_rate)
    out: list[tuple[int, int]] = []
    start = 0
    while len(audio) - start > limit:
        lo = start + max(limit - search, frame)
        hi = start + limit
        region = audio[lo:hi]
        n = len(region) // frame
        energy = (region[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
        cut = lo + int(np.argmin(energy)) * frame + frame // 2
        out.append((start, cut))
        start = cut
    out.append((start, len(audio)))
    return out
