"""Autoscaling policy with a fake clock: panic scale-out, no flapping, scale-in stabilisation, forecasts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from splitasr.cloud.coordinator.autoscaler import AutoscalerConfig, Sample, decide, demand_per_session, session_load
from splitasr.cloud.coordinator.forecast import forecast_rate, season_length
from splitasr.shared.errors import ConfigError

CONFIG = AutoscalerConfig(target_sessions_per_replica=4, predictive=False, max_replicas=32)


def simulate(config, sessions_at, seconds, replicas=2, arrivals_at=lambda t: 0.0, delay_at=lambda t, r: 0.0):
    """Drive the policy once per second; new replicas serve after ``cold_start_s``. Returns (t, replicas)."""
    history, timeline, pending, decisions = [], [], [], []
    for t in range(seconds):
        pending_ready = [r for at, r in pending if at <= t]
        if pending_ready:
            replicas = pending_ready[-1]
            pending = [(at, r) for at, r in pending if at > t]
        history.append(Sample(t, sessions_at(t), delay_at(t, replicas), arrivals_at(t), replicas))
        d = decide(config, history, t, decisions)
        decisions.append(d)
        if d.replicas > replicas:
            pending.append((t + config.cold_start_s, d.replicas))
        elif d.replicas < replicas:
            replicas = d.replicas  # draining takes effect at once for counting purposes
        timeline.append((t, d.replicas, d.reason))
    return timeline


def test_step_in_load_scales_out_within_one_period_in_panic_mode():
    timeline = simulate(CONFIG, lambda t: 8 if t < 30 else 40, 40)
    before = [r for t, r, _ in timeline if t < 30]
    assert set(before) == {2}
    t30 = next(x for x in timeline if x[0] == 30)
    assert t30[1] >= 10 and "panic" in t30[2]  # 40 sessions / 4 per replica, decided in the first period


def test_noisy_steady_load_does_not_flap():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 2.0, 700)
    timeline = simulate(CONFIG, lambda t: max(0.0, 14 + noise[t]), 700, replicas=4)
    after_warmup = [r for t, r, _ in timeline if t >= 60]
    changes = sum(1 for a, b in zip(after_warmup, after_warmup[1:], strict=False) if a != b)
    assert changes <= 1, f"{changes} changes in 10 minutes of noise"


@pytest.mark.parametrize("seed", range(1, 6))
def test_sparse_arrivals_do_not_make_the_forecast_flap(seed):
    # Poisson arrivals at 0.2/s with 20 s sessions: ~4 sessions, about one replica's worth. Raw
    # per-second counts (0 or 1) would forecast 1/s = 20 sessions = 5 replicas after every arrival.
    arrivals = np.random.default_rng(seed).poisson(0.2, 700)
    config = AutoscalerConfig(target_sessions_per_replica=4, predictive=True, mean_session_s=20, cold_start_s=1)
    timeline = simulate(config, lambda t: 4.0, 700, replicas=1, arrivals_at=lambda t: float(arrivals[t]))
    after_warmup = [r for t, r, _ in timeline if t >= 60]
    changes = [i for i, (a, b) in enumerate(zip(after_warmup, after_warmup[1:], strict=False)) if a != b]
    assert max(after_warmup) <= 3
    # no flapping: few changes in 10 minutes of noise, never two within 100 s
    assert len(changes) <= 3 and all(b - a >= 100 for a, b in zip(changes, changes[1:], strict=False)), changes


def test_scale_in_only_after_the_stabilisation_window():
    timeline = simulate(CONFIG, lambda t: 40 if t < 100 else 4, 500, replicas=10)
    assert all(r >= 10 for t, r, _ in timeline if 100 <= t < 100 + 300 - 1)
    assert any(r <= 2 for t, r, _ in timeline if t >= 100 + 300 + 61)


def test_a_clear_decline_skips_the_scale_in_hold_when_asked_but_noise_does_not():
    """``scale_in_on_decline`` (opt-in): sessions that end steadily (40 -> 4 over 60 s) are followed
    down while they fall (the stable window's mean lags); with it off the pool waits the whole
    300 s; noise is not a decline."""
    falling = lambda t: 40 if t < 100 else max(4, 40 - 0.6 * (t - 100))  # noqa: E731
    held = simulate(CONFIG, falling, 260, replicas=10)
    quick = simulate(dataclasses.replace(CONFIG, scale_in_on_decline=True), falling, 260, replicas=10)
    assert all(r >= 10 for t, r, _ in held if 100 <= t < 260)
    assert max(r for t, r, _ in quick if t >= 170) <= 5
    assert any("declining: scale-in not held" in why for t, r, why in quick if 100 <= t < 170)  # the reason says so
    assert not any("declining" in why for _, _, why in held)
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 2.0, 700)
    config = dataclasses.replace(CONFIG, scale_in_on_decline=True)
    timeline = simulate(config, lambda t: max(0.0, 14 + noise[t]), 700, replicas=4)
    after_warmup = [r for t, r, _ in timeline if t >= 60]
    # one change more than without it in 10 minutes of noise (a 60 s window's slope passes 3 SE by chance)
    assert sum(1 for a, b in zip(after_warmup, after_warmup[1:], strict=False) if a != b) <= 2


def test_no_scale_in_while_new_replicas_are_still_starting():
    config = AutoscalerConfig(target_sessions_per_replica=2, predictive=False, stable_window_s=10, panic_window_s=2)
    history = [Sample(t, 1, 0.0, 0, 1) for t in range(5)] + [Sample(5, 6, 0.0, 0, 1)]
    first = decide(config, history, 5)
    assert first.replicas == 3 and first.panic
    # a period later the new replicas are not ready yet (replicas still 1) and the load dipped: the
    # stable window alone asks for 1, which is a scale-in from the decided 3 and must be held
    history.append(Sample(6, 1, 0.0, 0, 1))
    second = decide(config, history, 6, [first])
    assert second.replicas == 3, second


def test_queue_delay_above_target_scales_out():
    config = AutoscalerConfig(target_sessions_per_replica=100, predictive=False)
    timeline = simulate(config, lambda t: 4, 20, replicas=2, delay_at=lambda t, r: 0.6 if t >= 10 else 0.0)
    assert max(r for t, r, _ in timeline if t >= 10) >= 4


def test_forecast_scales_out_before_a_repeating_ramp():
    # arrivals: a 20 s burst every 120 s; sessions follow arrivals with the mean session length
    def arrivals(t: float) -> float:
        return 2.0 if (t % 120) >= 100 else 0.2

    def sessions(t: float) -> float:
        return sum(arrivals(s) for s in range(max(0, int(t) - 20), int(t)))

    # (a scale-in hold shorter than the gap between bursts, so that each burst meets the pool the quiet left)
    config = AutoscalerConfig(
        target_sessions_per_replica=4,
        predictive=True,
        cold_start_s=5,
        mean_session_s=20,
        max_replicas=32,
        scale_in_stabilization_s=60,
    )
    with_forecast = simulate(config, sessions, 345, arrivals_at=arrivals)
    reactive_only = simulate(
        AutoscalerConfig(**{**config.__dict__, "predictive": False}), sessions, 345, arrivals_at=arrivals
    )
    # third burst starts at t=340: with two periods of history the forecast asks for more before it
    assert max(r for t, r, _ in with_forecast if 330 <= t < 340) > max(r for t, r, _ in reactive_only if 330 <= t < 340)
    assert any("predictive" in reason for t, r, reason in with_forecast if 330 <= t < 340)


def test_season_detection_and_holt_trend():
    pattern = [0.0] * 40 + [5.0] * 10
    assert season_length(pattern * 3) == 50
    assert forecast_rate([1.0, 2.0, 3.0, 4.0, 5.0], 2.0, 1.0) > 5.0  # trend extrapolated
    assert season_length([1.0] * 100) is None


def test_bad_config_is_rejected():
    with pytest.raises(ConfigError):
        AutoscalerConfig(min_replicas=5, max_replicas=2)
    with pytest.raises(ConfigError):
        AutoscalerConfig(panic_window_s=100, stable_window_s=60)


def test_batch_sessions_buy_replicas_at_a_quarter_of_the_interactive_rate():
    """QoS classes: 16 batch sessions ask for what 4 interactive ones do; the weight is configurable."""
    assert session_load(CONFIG, [(16, 16)]) == session_load(CONFIG, [(4, 0)]) == 4.0
    assert session_load(CONFIG, [(10, 4), (6, 0)]) == 13.0
    only_interactive = AutoscalerConfig(batch_session_weight=0.0)
    assert session_load(only_interactive, [(10, 4)]) == 6.0
    timeline = simulate(CONFIG, lambda t: session_load(CONFIG, [(40, 40)]), 40)
    assert max(r for _, r, _ in timeline) < 10  # 40 interactive sessions would ask for 10 replicas
    with pytest.raises(ConfigError, match="batch_session_weight"):
        AutoscalerConfig(batch_session_weight=1.5)


def busy_sample(t: float, busy: float, replicas: int, delay: float = 0.0, sessions: float = 10.0) -> Sample:
    return Sample(t=t, sessions=sessions, queue_delay_s=delay, arrivals=0.0, replicas=replicas, busy=busy)


def test_the_scale_in_hold_keeps_the_load_not_the_replicas_that_drained_a_queue():
    """A queue asks for replicas to drain it; once it is drained the pool goes back to what the load
    needs at once: the hold looks back on the load (2 replicas here), not on the drain (4)."""
    config = AutoscalerConfig(
        signal="busy", target_busy=0.5, target_queue_delay_s=0.1, predictive=False, panic_window_s=2, stable_window_s=10
    )
    history = [busy_sample(t, 1.0, 2) for t in range(1, 20)]
    history.append(busy_sample(20, 1.0, 2, delay=2.1))  # 2 x 2 s of queued work: 2 more replicas drain it in 2 s
    past = [decide(config, history, 20.0)]
    assert past[-1].replicas == 4 and past[-1].recommended == 2
    for t in range(21, 40):
        history.append(busy_sample(t, 1.0, past[-1].replicas))
        past.append(decide(config, history, float(t), past))
    assert max(d.replicas for d in past) == 4  # the drained queue (delay 0 now) adds no more
    assert past[-1].replicas == 2, past[-1]  # back within the stable window, not after the 300 s hold
    # a stage that was queueing needed at least the replicas it had, whatever its load read
    queued = [*history, busy_sample(40, 1.0, 6, delay=0.5)]
    assert decide(config, queued, 40.0, past).recommended == 6


def test_demand_per_session_is_learnt_where_the_stage_kept_up():
    """A saturated stage's busy fraction shows what its replicas could do, not what its sessions
    need: read as the need, 20 sessions on 2 busy replicas would ask 0.1 replicas each (0.3 over the
    window) where the clear samples show 0.2 (0.4 at the 0.5 target)."""
    config = AutoscalerConfig(signal="busy", target_busy=0.5, target_queue_delay_s=0.1, stable_window_s=30)
    clear = [busy_sample(t, 2.0, 4, sessions=10) for t in range(1, 21)]
    saturated = [busy_sample(t, 2.0, 2, delay=1.0, sessions=20) for t in range(21, 31)]
    assert demand_per_session(config, clear + saturated, 30.0) == pytest.approx(0.4)
    assert demand_per_session(config, saturated, 30.0) == pytest.approx(0.2)  # nothing clear: all of them
    # an overload longer than the window: the last window's worth of samples where it kept up
    longer = [busy_sample(t, 2.0, 2, delay=1.0, sessions=20) for t in range(21, 71)]
    assert demand_per_session(config, clear + longer, 70.0) == pytest.approx(0.4)
    # idle seconds (no sessions) before an overload say nothing about a session's need: not 0
    idle = [busy_sample(t, 0.0, 1, sessions=0) for t in range(1, 21)]
    assert demand_per_session(config, idle + saturated, 30.0) == pytest.approx(0.2)


def test_room_for_a_burst_like_the_last_and_none_once_the_window_is_quiet():
    """With ``burst_headroom``, sessions that rose by 8 in one period leave room for 8 more until
    ``burst_window_s`` has passed without such a rise."""
    base = AutoscalerConfig(target_sessions_per_replica=4, predictive=False, max_replicas=32)
    roomy = dataclasses.replace(base, burst_headroom=1.0, burst_window_s=30)
    burst = lambda t: 8 if t < 10 else 16  # noqa: E731
    plain = simulate(base, burst, 60, replicas=2)
    kept = simulate(roomy, burst, 60, replicas=2)
    assert {r for t, r, _ in plain if 15 <= t < 60} == {4}  # 16 sessions / 4
    assert {r for t, r, _ in kept if 15 <= t < 38} == {6}  # (16 + 8) / 4, while the 9 -> 10 rise is in the window
    assert {r for t, r, _ in kept if 45 <= t < 60} == {4}  # the rise left the window: no room, no hold on it
    # sessions coming back after a dip (a shard drained, or out of the count for a moment) are not a burst
    dip = lambda t: 8 if 20 <= t < 22 else 16  # noqa: E731
    assert {r for t, r, _ in simulate(roomy, dip, 40, replicas=4) if 25 <= t < 40} == {4}
    # a rise across a gap in the samples (a restart, missed periods) is not a burst
    gappy = [Sample(t, 8 if t < 10 else 16, 0.0, 0.0, 4) for t in [*range(0, 5), *range(15, 30)]]
    assert decide(roomy, gappy, 29.0).replicas == 4
    for bad in ({"burst_headroom": -1.0}, {"burst_window_s": 0.0}, {"decline_window_s": -1.0}):
        with pytest.raises(ConfigError):
            AutoscalerConfig(**bad)
