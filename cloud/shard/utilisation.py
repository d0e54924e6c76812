"""How busy a stage is: busy fraction and (decoder) batch occupancy over a sliding window.

The coordinator scales each stage's pool on these (with the stage's queue delay): the busy
fraction is the share of wall time the stage's worker thread spent computing; occupancy is the
time-weighted mean of running sequences over the decoder's batch limit. Times are explicit
(``now``), so tests use a fake clock.
"""

from __future__ import annotations

from collections import deque


class Utilisation:
    def __init__(self, window_s: float = 5.0, capacity: int = 1):
        self.window_s = window_s
        self.capacity = capacity  # the batch limit: occupancy = mean running sequences / capacity
        self._spans: deque[tuple[float, float, int]] = deque()  # (end time, seconds busy, batch size)
        self.requests = 0  # requests served (cumulative), so the coordinator sees a replica take work

    def add(self, now: float, busy_s: float, size: int = 1) -> None:
        """``busy_s`` seconds of computing that ended at ``now``, on a batch of ``size``."""
        self._spans.append((now, max(0.0, busy_s), size))
        while self._spans and self._spans[0][0] < now - self.window_s:
            self._spans.popleft()

    def _recent(self, now: float) -> list[tuple[float, float, int]]:
        return [s for s in self._spans if s[0] >= now - self.window_s]

    def busy(self, now: float) -> float:
        """Share of the window spent computing, in [0, 1]."""
        return min(1.0, sum(b for _, b, _ in self._recent(now)) / self.window_s)

    def occupancy(self, now: float) -> float:
        """Mean running batch over the window, as a share of the batch limit, in [0, 1]."""
        weighted = sum(b * size for _, b, size in self._recent(now))
        return min(1.0, weighted / (self.window_s * self.capacity))
