"""Other systems' autoscalers, as they are implemented, for the simulator to compare against.

Each is a small state machine driven by explicit times: ``decide(obs)`` takes one observation of a
pool (time, ready replicas, the metric it scales on) and returns the replicas it wants. They
follow the published algorithms and defaults:

- **Kubernetes HPA** (``pkg/controller/podautoscaler``): every 15 s, ``desired = ceil(ready x
  metric / target)``, no change within a tolerance of 0.1; scale-up at most ``max(2 x ready,
  ready + 4)`` per period (the default behaviour's two policies, the larger wins); scale-down to
  the highest recommendation of the last 300 s (stabilisation window).
- **Knative KPA** (``pkg/autoscaler/scaling/autoscaler.go``): every 2 s, the mean concurrency over
  a 60 s stable and a 6 s panic window; ``desired = ceil(concurrency / (target x 0.7))``; panic
  when the panic window's desired is at least 2x the ready pods, and while panicking never scale
  down, until a stable window passes without panic; scale down at most to ``ready / 2`` (max
  scale-down rate 2) and up at most ``1000 x ready``.
- **Ray Serve** (``replica_queue_length_autoscaling_policy`` + delay logic): ongoing requests
  averaged over the 30 s look-back, ``desired = ceil(total / target_ongoing_requests)`` (2);
  a scale-up happens once the decision has asked for more for 30 s in a row, a scale-down after
  600 s in a row.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Observation:
    t: float
    ready: int  # replicas serving
    value: float  # the policy's metric over the whole pool: utilisation sum (HPA), concurrency (KPA, Ray)


def _window_mean(samples: deque[tuple[float, float]], now: float, seconds: float) -> float | None:
    values = [v for t, v in samples if now - seconds < t <= now]
    return sum(values) / len(values) if values else None


def _trim(samples: deque[tuple[float, float]], now: float, keep_s: float) -> None:
    while samples and samples[0][0] <= now - keep_s:
        samples.popleft()


@dataclass(kw_only=True)
class _Bounded:
    """What the three share: replica bounds, and their current decision, which starts at what is ready."""

    min_replicas: int = 1
    max_replicas: int = 1_000_000

    def __post_init__(self) -> None:
        self._current: int | None = None

    def _begin(self, obs: Observation) -> int:
        if self._current is None:
            self._current = max(self.min_replicas, obs.ready)
        return self._current

    def _clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass
class HPA(_Bounded):
    """``value``: the pool's summed metric (e.g. busy cores); ``target``: per pod (e.g. 0.6)."""

    target: float
    sync_period_s: float = 15.0
    tolerance: float = 0.1
    downscale_stabilization_s: float = 300.0
    scale_up_pods: int = 4
    scale_up_percent: float = 100.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._last_sync: float | None = None
        self._recommendations: deque[tuple[float, float]] = deque()

    def decide(self, obs: Observation) -> int:
        self._begin(obs)
        if self._last_sync is not None and obs.t - self._last_sync < self.sync_period_s:
            return self._current
        self._last_sync = obs.t
        ready = max(obs.ready, 1)
        ratio = (obs.value / ready) / self.target
        wanted = ready if abs(ratio - 1.0) <= self.tolerance else math.ceil(ready * ratio)
        self._recommendations.append((obs.t, wanted))
        _trim(self._recommendations, obs.t, self.downscale_stabilization_s)
        if wanted < self._current:  # scale down only as far as the window's highest recommendation
            wanted = min(self._current, max(r for _, r in self._recommendations))
        else:
            limit = max(math.ceil(ready * (1 + self.scale_up_percent / 100)), ready + self.scale_up_pods)
            wanted = min(wanted, limit)
        self._current = self._clamp(wanted)
        return self._current


@dataclass
class KPA(_Bounded):
    """``value``: the pool's concurrency (e.g. sessions); ``target``: concurrency per pod."""

    target: float
    tick_s: float = 2.0
    stable_window_s: float = 60.0
    panic_window_percent: float = 10.0
    panic_threshold_percent: float = 200.0
    target_utilization: float = 0.7
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._samples: deque[tuple[float, float]] = deque()
        self._last_tick: float | None = None
        self._panic_since: float | None = None

    def decide(self, obs: Observation) -> int:
        self._samples.append((obs.t, obs.value))
        _trim(self._samples, obs.t, self.stable_window_s)
        self._begin(obs)
        if self._last_tick is not None and obs.t - self._last_tick < self.tick_s:
            return self._current
        self._last_tick = obs.t
        per_pod = self.target * self.target_utilization
        panic_s = self.stable_window_s * self.panic_window_percent / 100
        stable = math.ceil(_window_mean(self._samples, obs.t, self.stable_window_s) / per_pod)
        panic = math.ceil(_window_mean(self._samples, obs.t, panic_s) / per_pod)
        ready = max(obs.ready, 1)
        if panic / ready >= self.panic_threshold_percent / 100:
            self._panic_since = obs.t  # (re)start panic mode
        elif self._panic_since is not None and obs.t - self._panic_since >= self.stable_window_s:
            self._panic_since = None
        wanted = max(panic, self._current) if self._panic_since is not None else stable
        wanted = min(wanted, math.ceil(self.max_scale_up_rate * ready))
        wanted = max(wanted, math.floor(ready / self.max_scale_down_rate))
        self._current = self._clamp(wanted)
        return self._current


@dataclass
class RayServe(_Bounded):
    """``value``: ongoing requests across the pool; ``target_ongoing_requests`` per replica."""

    target_ongoing_requests: float = 2.0
    look_back_period_s: float = 30.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._samples: deque[tuple[float, float]] = deque()
        self._since: float | None = None  # when the decision started to point the same way
        self._direction = 0

    def decide(self, obs: Observation) -> int:
        self._samples.append((obs.t, obs.value))
        _trim(self._samples, obs.t, self.look_back_period_s)
        self._begin(obs)
        total = _window_mean(self._samples, obs.t, self.look_back_period_s)
        wanted = self._clamp(math.ceil(total / self.target_ongoing_requests))
        direction = (wanted > self._current) - (wanted < self._current)
        if direction == 0:
            self._direction, self._since = 0, None
            return self._current
        if direction != self._direction:
            self._direction, self._since = direction, obs.t
        delay = self.upscale_delay_s if direction > 0 else self.downscale_delay_s
        if obs.t - self._since >= delay:
            self._current, self._direction, self._since = wanted, 0, None
        return self._current
