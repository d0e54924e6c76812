"""Autoscaling policy for one stage's pool: reactive (KPA-like stable/panic windows) + predictive.

Every stage of every model (stage 0, encoder B, decoder) is decided by this code. A stage's load
is its *demand* in replicas: stage 0 counts sessions (``signal="sessions"``: sessions / target per
replica); the later stages count work (``signal="busy"``: the sum over replicas of the busy
fraction, or the decoder's batch occupancy when higher, / the target busy fraction). Queue delay at
the stage is the second signal: work queued beyond the target delay (about replicas x excess delay,
in core-seconds) keeps at least the current replicas and adds those that drain it within
``backlog_drain_s``.
(It used to ask for ``replicas x delay / target`` instead, which the simulator showed running away
on bursts: M/M/1 delay grows without bound near saturation, and each decision multiplied the pool.)
The predictive part forecasts session arrivals one lead time ahead
and turns them into demand through Little's law and each stage's measured demand per session, so
each stage scales in proportion to its own service time. Every stage also follows the sessions
connected now, projected one lead time ahead on their recent rise (feed-forward from stage 0), at
its demand per session, so a jump in sessions scales the decoders before their queues show it.

Pure functions of (config, metric history, now): no clock, no I/O, so tests drive them with a
fake clock. The caller appends one :class:`Sample` per decision period and applies the decision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from splitasr.cloud.coordinator.forecast import forecast_rate
from splitasr.shared.errors import ConfigError


@dataclass(frozen=True)
class AutoscalerConfig:
    signal: Literal["sessions", "busy"] = "sessions"  # what a replica's load is counted in
    target_busy: float = 0.6  # signal "busy": busy fraction (or decoder occupancy) per replica
    target_sessions_per_replica: float = 4.0
    batch_session_weight: float = 0.25  # signal "sessions": a batch session (may wait) counts this much
    target_queue_delay_s: float = 0.15
    backlog_drain_s: float = 2.0  # queued work beyond the target delay is drained within this
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0  # panic when the panic-window load reaches 2x what the replicas hold
    scale_in_stabilization_s: float = 300.0
    decision_period_s: float = 1.0
    cold_start_s: float = 3.0  # measured per pool; the predictive lead time
    mean_session_s: float = 20.0  # Little's law: sessions = arrival rate x duration
    arrival_window_s: float = 30.0  # forecast arrivals averaged over this window
    min_replicas: int = 1
    max_replicas: int = 16
    warm_spares: int = 1
    predictive: bool = True
    max_scale_up_rate: float = 10.0  # a decision asks for at most this x the ready replicas (as Knative's)
    scale_in_on_decline: bool = False  # a clear fall of demand (sessions ending) skips the scale-in hold
    decline_window_s: float = 0.0  # over which a fall must be clear; 0: the stable window
    burst_headroom: float = 0.0  # room kept for this x the largest rise of sessions in one period lately
    burst_window_s: float = 30.0  # ... within this window

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(1, self.min_replicas):
            raise ConfigError(
                f"need 0 <= min_replicas <= max_replicas, >= 1; got {self.min_replicas}, {self.max_replicas}"
            )
        if self.panic_window_s <= 0 or self.stable_window_s < self.panic_window_s:
            raise ConfigError("need 0 < panic_window_s <= stable_window_s")
        if self.target_sessions_per_replica <= 0 or self.target_queue_delay_s <= 0 or self.backlog_drain_s <= 0:
            raise ConfigError("targets must be positive")
        if not 0 <= self.batch_session_weight <= 1:
            raise ConfigError(f"batch_session_weight must be in [0, 1], got {self.batch_session_weight}")
        if not 0 < self.target_busy <= 1:
            raise ConfigError(f"target_busy must be in (0, 1], got {self.target_busy}")
        if self.arrival_window_s < self.decision_period_s:
            raise ConfigError("need arrival_window_s >= decision_period_s")
        if self.max_scale_up_rate < 1:
            raise ConfigError(f"max_scale_up_rate must be >= 1, got {self.max_scale_up_rate}")
        if self.burst_headroom < 0:
            raise ConfigError(f"burst_headroom must be >= 0, got {self.burst_headroom}")
        if self.burst_window_s < 2 * self.decision_period_s:  # a rise is between two samples of the window
            raise ConfigError(f"burst_window_s must be >= 2 decision periods, got {self.burst_window_s}")
        if self.decline_window_s < 0:
            raise ConfigError(f"decline_window_s must be >= 0 (0: the stable window), got {self.decline_window_s}")

    @property
    def lead_time_s(self) -> float:
        return self.cold_start_s + self.decision_period_s


@dataclass(frozen=True)
class Sample:
    """One observation of a pool, taken every decision period."""

    t: float
    sessions: float  # in-flight sessions across the pool, batch ones weighted (batch_session_weight)
    queue_delay_s: float  # pool-wide (e.g. max or p90 of replicas' recent queue delay)
    arrivals: float  # new sessions since the previous sample
    replicas: int  # ready replicas serving traffic
    busy: float = 0.0  # sum over those replicas of max(busy fraction, decoder occupancy)


@dataclass(frozen=True)
class Decision:
    t: float
    replicas: int  # replicas that should serve traffic
    warm_spares: int
    reason: str
    panic: bool
    # what later decisions' scale-in hold looks back on, in replicas: the latest sample's load, at least
    # the arrival forecast, and at least the replicas the stage had if it was queueing
    recommended: int


def _window(history: Sequence[Sample], now: float, seconds: float) -> list[Sample]:
    return [s for s in history if now - seconds < s.t <= now]


def _replicas(demand: float) -> int:
    """Whole replicas for a demand: rounded up, but not for float noise (2.0000000001 is 2)."""
    return math.ceil(demand - 1e-9)


def _kept_up(config: AutoscalerConfig, sample: Sample) -> bool:
    """Whether the stage kept up at this sample: its queue within target."""
    return sample.queue_delay_s <= config.target_queue_delay_s


def session_load(config: AutoscalerConfig, loads: Sequence[tuple[int, int]]) -> float:
    """Stage 0's session count for a sample from each replica's (sessions, of them batch): a batch
    session (may wait, QoS class ``batch``) counts ``batch_session_weight`` of an interactive one."""
    return sum(sessions - (1 - config.batch_session_weight) * batch for sessions, batch in loads)


def demand(config: AutoscalerConfig, sample: Sample) -> float:
    """The replicas a sample's load asks for, before rounding up."""
    if config.signal == "sessions":
        return sample.sessions / config.target_sessions_per_replica
    return sample.busy / config.target_busy


def _load(config: AutoscalerConfig, samples: list[Sample], use_latest: bool) -> tuple[float, float]:
    """Mean demand and queue delay of a window; in panic the latest sample counts if it is higher."""
    wanted = sum(demand(config, s) for s in samples) / len(samples)
    delay = sum(s.queue_delay_s for s in samples) / len(samples)
    if use_latest:
        wanted, delay = max(wanted, demand(config, samples[-1])), max(delay, samples[-1].queue_delay_s)
    return wanted, delay


def _load_replicas(config: AutoscalerConfig, samples: list[Sample], replicas: int, use_latest: bool = False) -> int:
    """Replicas needed for the window's demand. Work queued now beyond the target delay (``replicas
    x excess delay`` core-seconds, from the latest sample: a queue that has drained needs no more
    replicas, though the window's mean delay still shows it) means every replica is busy whatever
    the demand signal says (stage 0 counts sessions, not work): then the stage needs at least its
    replicas, plus those that drain the queue within ``backlog_drain_s``."""
    if not samples:
        return replicas
    wanted, _ = _load(config, samples, use_latest)
    backlog = replicas * max(0.0, samples[-1].queue_delay_s - config.target_queue_delay_s)
    if backlog <= 0:
        return _replicas(wanted)
    return max(_replicas(wanted), replicas) + math.ceil(backlog / config.backlog_drain_s)


def _panicking(config: AutoscalerConfig, history: Sequence[Sample], now: float) -> bool:
    recent = _window(history, now, config.panic_window_s)
    if not recent:
        return False
    wanted, delay = _load(config, recent, use_latest=True)
    return (
        wanted >= config.panic_threshold * max(recent[-1].replicas, 1)
        or delay >= config.panic_threshold * config.target_queue_delay_s
    )


def reactive(config: AutoscalerConfig, history: Sequence[Sample], now: float) -> tuple[int, bool]:
    """Replicas wanted from observed load at ``now`` and whether the pool is in panic mode."""
    current = history[-1].replicas if history else config.min_replicas
    if _panicking(config, history, now):
        panic_window = _window(history, now, config.panic_window_s)
        return max(current, _load_replicas(config, panic_window, current, use_latest=True)), True
    return _load_replicas(config, _window(history, now, config.stable_window_s), current), False


def demand_per_session(config: AutoscalerConfig, history: Sequence[Sample], now: float) -> float:
    """Replicas one session needs at this stage: 1 / target for stage 0; for a later stage, its
    measured demand over the sessions it served in the stable window (its service time per session),
    from the samples where it kept up: a saturated stage's busy fraction shows only what its
    replicas could do, and read as the sessions' need it would keep the pool small. Through an
    overload longer than the window, the latest window's worth of such samples in the history."""
    if config.signal == "sessions":
        return 1.0 / config.target_sessions_per_replica
    served = [s for s in history if s.t <= now and s.sessions > 0]
    window = _window(served, now, config.stable_window_s)
    clear = [s for s in window if _kept_up(config, s)]
    if not clear:  # an overload longer than the window: what the stage did when it last kept up
        earlier = [s for s in served if _kept_up(config, s)]
        clear = _window(earlier, earlier[-1].t, config.stable_window_s) if earlier else []
    window = clear or window
    sessions = sum(s.sessions for s in window)
    return sum(demand(config, s) for s in window) / sessions if sessions > 0 else 0.0


def predictive(
    config: AutoscalerConfig, history: Sequence[Sample], now: float, per_session: float | None = None
) -> int:
    """Replicas for the arrival rate forecast one lead time (cold start + period) ahead: sessions by
    Little's law (rate x mean session), times the stage's demand per session (``per_session``, or
    :func:`demand_per_session` when not given)."""
    samples = [s for s in history if s.t <= now]
    if len(samples) < 2:
        return 0
    rates = [s.arrivals / config.decision_period_s for s in samples]
    rate = forecast_rate(rates, config.lead_time_s, config.decision_period_s, config.arrival_window_s)
    if per_session is None:
        per_session = demand_per_session(config, samples, now)
    return _replicas(rate * config.mean_session_s * per_session)


def _trend(points: Sequence[tuple[float, float]]) -> tuple[float, float, float, float] | None:
    """Least-squares line through ``(t, y)`` points: (slope, its standard error, mean t, mean y);
    None for fewer than three points or no spread in t."""
    n = len(points)
    if n < 3:
        return None
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((t - mean_t) ** 2 for t, _ in points)
    if sxx <= 0:
        return None
    slope = sum((t - mean_t) * (y - mean_y) for t, y in points) / sxx
    residual = sum((y - mean_y - slope * (t - mean_t)) ** 2 for t, y in points) / (n - 2)
    return slope, math.sqrt(residual / sxx), mean_t, mean_y


def burst_room(config: AutoscalerConfig, history: Sequence[Sample], now: float) -> float:
    """Sessions to keep room for: ``burst_headroom`` x the largest rise between two consecutive
    samples (a few decision periods apart at most: a late tick under load still counts, a gap as
    after a restart does not) in the last ``burst_window_s``, counted above the highest count of the
    panic window before it: sessions that come back after a dip (a shard drained or briefly out of
    the count) are not a burst. Sessions come in bursts (a client's batch of calls) that rise
    within a cold start, faster than any replica can start; while they keep coming the pool holds
    room for one more like the largest lately, and none once a quiet window has passed."""
    if config.burst_headroom <= 0:
        return 0.0
    window = _window(history, now, config.burst_window_s)
    gap = 3 * config.decision_period_s
    rise = 0.0
    for i, b in enumerate(window[1:], start=1):
        before = [a.sessions for a in window[:i] if b.t - config.panic_window_s <= a.t]
        if before and b.t - window[i - 1].t <= gap:
            rise = max(rise, b.sessions - max(before))
    return config.burst_headroom * rise


def projected_sessions(config: AutoscalerConfig, history: Sequence[Sample], now: float) -> float:
    """Sessions one lead time from now: the panic window's mean, or, while the count rises clearly
    (a least-squares slope over twice its standard error) and the pool is predictive, the fitted line
    one lead time ahead. With ``burst_headroom``, at least the latest count plus the room kept for a
    burst (:func:`burst_room`; the latest count alone, not the window's mean, when there was none).
    Never projected downwards (scale-in waits for the load itself), and noise is not a trend."""
    recent = _window(history, now, config.panic_window_s)
    if not recent:
        return 0.0
    fit = _trend([(s.t, s.sessions) for s in recent])
    projection = sum(s.sessions for s in recent) / len(recent)
    if config.predictive and fit is not None and fit[0] > max(0.0, 2 * fit[1]):
        slope, _, mean_t, _ = fit
        projection = max(projection + slope * (now - mean_t), recent[-1].sessions) + slope * config.lead_time_s
    # with burst room off the floor must stay 0, not become the latest count
    floor = recent[-1].sessions + burst_room(config, history, now) if config.burst_headroom > 0 else 0.0
    return max(projection, floor)


def declining(config: AutoscalerConfig, history: Sequence[Sample], now: float) -> bool:
    """Whether the stage's demand falls clearly over the last ``decline_window_s`` (the stable
    window if 0; a least-squares slope below minus three times its standard error): sessions
    ending, not noise."""
    seconds = config.decline_window_s or config.stable_window_s
    fit = _trend([(s.t, demand(config, s)) for s in _window(history, now, seconds)])
    return fit is not None and fit[0] < 0 and -fit[0] > 3 * fit[1]


def feed_forward(
    config: AutoscalerConfig, history: Sequence[Sample], now: float, per_session: float | None = None
) -> int:
    """Replicas for the sessions projected one lead time ahead at the stage's demand per session
    (``per_session``, or :func:`demand_per_session` when not given).
    A later stage's busy fraction cannot show more work than its replicas can do and lags a jump in
    sessions by the time the work takes to reach it; stage 0's session count does not."""
    if per_session is None:
        per_session = demand_per_session(config, history, now)
    return _replicas(projected_sessions(config, history, now) * per_session)


def decide(config: AutoscalerConfig, history: Sequence[Sample], now: float, past: Sequence[Decision] = ()) -> Decision:
    """The pool's decision at ``now`` from its samples and its earlier decisions (for scale-in hold)."""
    current = history[-1].replicas if history else config.min_replicas
    recent = [s for s in history if s.t > now - config.stable_window_s]
    wanted, panic = reactive(config, recent, now)
    reason = f"reactive {wanted}" + (" (panic)" if panic else "")
    per_session = demand_per_session(config, history, now)  # one reading of the history for both
    following = feed_forward(config, history, now, per_session)
    if following > wanted:
        wanted, reason = following, f"sessions {following} > {reason}"
    ahead = predictive(config, history, now, per_session) if config.predictive else 0
    if ahead > wanted:
        wanted, reason = ahead, f"predictive {ahead} > {reason}"
    # the scale-in hold looks back on the load itself (each period's sample, not a window's mean:
    # at least the replicas it had if it was queueing) and the arrival forecast, not on the
    # transient part of a decision: a projected rise the load did not follow, room for a burst, or
    # the replicas that drain a queue are not held for minutes
    recommended = wanted
    if recent:
        latest = recent[-1]
        recommended = max(_replicas(demand(config, latest)), ahead, 0 if _kept_up(config, latest) else latest.replicas)
    # replicas still starting are not in ``current`` yet: asking for fewer than last time is a scale-in too
    baseline = max(current, past[-1].replicas if past else 0)
    if wanted < baseline:
        # scale in only if no recommendation in the stabilisation window asked for more
        held = max((d.recommended for d in past if now - config.scale_in_stabilization_s < d.t < now), default=0)
        falling = config.scale_in_on_decline and declining(config, history, now)
        if panic or (held > wanted and not falling):
            wanted, reason = min(baseline, max(held, wanted)), f"scale-in held ({reason})"
        elif held > wanted:  # the hold would have kept more: the decline let the pool follow it down
            reason = f"{reason}, declining: scale-in not held"
    # a queue delay of minutes must not ask for thousands of replicas at once (the simulator found
    # 1 -> 10^6 decoders in one step): like Knative's max scale-up rate, at most this x what is ready
    if wanted > current:
        ceiling = math.ceil(max(current, 1) * config.max_scale_up_rate)
        if wanted > ceiling:
            wanted, reason = ceiling, f"{reason}, limited to {config.max_scale_up_rate:g}x"
    replicas = min(max(wanted, config.min_replicas), config.max_replicas)
    return Decision(
        t=now, replicas=replicas, warm_spares=config.warm_spares, reason=reason, panic=panic, recommended=recommended
    )
