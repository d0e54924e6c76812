"""Overload policy of a stage-0 shard: pure functions of the recent queue delay (tested with a fake clock).

As the queue delay a request meets on its way through the stages grows past fractions of the
budget, the shard first halves its partial cadence, then stops partials, then refuses new sessions
with a retryable ERROR (the coordinator routes them elsewhere). Admitted sessions keep getting their
FINALs at every level. Levels go down again only once the delay is well below the threshold
(hysteresis), so the shard does not flap.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

NORMAL, BACKOFF, NO_PARTIALS, REJECT = 0, 1, 2, 3
LEVEL_NAMES = ("normal", "partials backed off", "partials off", "rejecting new sessions")


@dataclass(frozen=True)
class OverloadPolicy:
    budget_s: float = 0.5  # queue delay one request may meet across the stages
    backoff_at: float = 0.5  # fractions of the budget at which each level starts
    partials_off_at: float = 1.0
    reject_at: float = 2.0
    hysteresis: float = 0.6  # leave a level once the delay is below this fraction of its threshold
    backoff_factor: float = 2.0
    window_s: float = 5.0  # queue-delay samples older than this are forgotten

    def thresholds(self) -> tuple[float, float, float]:
        b = self.budget_s
        return (self.backoff_at * b, self.partials_off_at * b, self.reject_at * b)


def overload_level(delay_s: float, policy: OverloadPolicy, current: int = NORMAL) -> int:
    """The level for a queue delay, moving up at once and down only below the hysteresis band."""
    thresholds = policy.thresholds()
    level = sum(delay_s >= t for t in thresholds)
    if level >= current:
        return level
    level = current
    while level > NORMAL and delay_s < thresholds[level - 1] * policy.hysteresis:
        level -= 1
    return level


def partial_interval(base_s: float, level: int, policy: OverloadPolicy) -> float | None:
    """Seconds of audio between partials at this level; None when partials are off."""
    if level >= NO_PARTIALS or base_s <= 0:
        return None
    return base_s * (policy.backoff_factor if level == BACKOFF else 1.0)


class SlidingWindow:
    """Samples of the last ``window_s`` seconds (at most ``max_samples``): their mean or a quantile,
    0 when there are none (an idle shard's queue delay, the FINAL latency of a pool that gets no
    sessions: a stale value would keep a degraded pool degraded)."""

    def __init__(self, window_s: float, max_samples: int | None = None):
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, now: float, delay_s: float) -> None:
        self._samples.append((now, delay_s))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()

    def estimate(self, now: float) -> float:
        self._trim(now)
        if not self._samples:
            return 0.0
        return sum(d for _, d in self._samples) / len(self._samples)

    def quantile(self, now: float, q: float) -> float:
        """The ``q`` quantile (nearest rank at or above) of the window's samples."""
        self._trim(now)
        values = sorted(v for _, v in self._samples)
        return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


class OverloadState:
    """The live level of one shard: feed it queue delays, ask it for the level."""

    def __init__(self, policy: OverloadPolicy):
        self.policy = policy
        self.window = SlidingWindow(policy.window_s)
        self.level = NORMAL

    def observe(self, now: float, delay_s: float) -> int:
        self.window.add(now, delay_s)
        return self.update(now)

    def update(self, now: float) -> int:
        self.level = overload_level(self.window.estimate(now), self.policy, self.level)
        return self.level
