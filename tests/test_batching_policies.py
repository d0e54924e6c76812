"""Pure batching and overload policies with a fake clock, the result cache, and the encoder micro-batcher."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from splitasr.cloud.shard.microbatch import BatchPolicy, MicroBatcher, aimd_wait, close_batch, default_max_batch
from splitasr.cloud.shard.overload import (
    BACKOFF,
    NO_PARTIALS,
    NORMAL,
    REJECT,
    OverloadPolicy,
    OverloadState,
    SlidingWindow,
    overload_level,
    partial_interval,
)
from splitasr.cloud.shard.result_cache import ResultCache, feature_key
from splitasr.cloud.shard.supersession import FINAL_REV, Supersession

POLICY = OverloadPolicy(budget_s=0.4)  # thresholds 0.2 / 0.4 / 0.8 s


@pytest.mark.parametrize(
    ("delay", "level"), [(0.0, NORMAL), (0.19, NORMAL), (0.2, BACKOFF), (0.5, NO_PARTIALS), (0.9, REJECT)]
)
def test_overload_levels_rise_with_queue_delay(delay, level):
    assert overload_level(delay, POLICY) == level


def test_overload_levels_fall_only_below_the_hysteresis_band():
    assert overload_level(0.7, POLICY, REJECT) == REJECT  # below 0.8 but above 0.6 * 0.8
    assert overload_level(0.45, POLICY, REJECT) == NO_PARTIALS
    assert overload_level(0.1, POLICY, REJECT) == NORMAL


def test_partial_cadence_backs_off_then_stops():
    assert partial_interval(0.5, NORMAL, POLICY) == 0.5
    assert partial_interval(0.5, BACKOFF, POLICY) == 1.0
    assert partial_interval(0.5, NO_PARTIALS, POLICY) is None
    assert partial_interval(0.5, REJECT, POLICY) is None


def test_overload_state_recovers_when_the_window_empties():
    state = OverloadState(POLICY)
    t = 100.0
    for i in range(10):
        state.observe(t + i * 0.1, 1.0)
    assert state.level == REJECT
    assert state.update(t + 3.0) == REJECT  # still within the 5 s window
    assert state.update(t + 20.0) == NORMAL  # idle: no delay samples left


def test_final_latency_percentiles_cover_only_the_recent_window():
    """A pool the ladder sent to its fallback gets no FINALs: its old p99 must expire, or the
    ladder would never see low pressure and climb back (found by benchmarks/ladder.py)."""
    window = SlidingWindow(60.0, max_samples=1000)
    for i in range(100):
        window.add(float(i) / 10, 100.0 + i)  # 100 FINALs in 10 s: 100 .. 199 ms
    assert window.quantile(10.0, 0.5) == 150.0 and window.quantile(10.0, 0.99) == 199.0
    window.add(65.0, 120.0)  # 55 s later: the first half has left the window
    assert window.quantile(65.0, 0.0) == 120.0 and window.quantile(65.0, 0.02) == 150.0  # 150 .. 199 left
    assert window.quantile(80.0, 0.99) == 120.0 and window.quantile(126.0, 0.99) == 0.0
    bounded = SlidingWindow(60.0, max_samples=3)
    for i in range(10):
        bounded.add(0.0, float(i))
    assert bounded.quantile(0.0, 0.0) == 7.0  # only the newest max_samples are kept


def test_batch_closes_when_full_late_or_near_the_deadline():
    wait, service = 0.010, 0.030
    assert not close_batch(1.000, 1.000, 2.0, 1, wait, service, max_batch=4)
    assert close_batch(1.000, 1.000, 2.0, 4, wait, service, max_batch=4)  # full
    assert close_batch(1.011, 1.000, 2.0, 1, wait, service, max_batch=4)  # waited long enough
    assert close_batch(1.001, 1.000, 1.025, 1, wait, service, max_batch=4)  # waiting would miss the deadline


def test_aimd_wait_grows_additively_and_halves_past_the_budget():
    policy = BatchPolicy(max_batch=8, initial_wait_s=0.01, increase_s=0.001, budget_s=0.1, max_wait_s=0.05)
    wait = policy.initial_wait_s
    for _ in range(5):
        wait = aimd_wait(wait, 0.05, policy)
    assert wait == pytest.approx(0.015)
    assert aimd_wait(wait, 0.2, policy) == pytest.approx(0.0075)
    for _ in range(100):
        wait = aimd_wait(wait, 0.05, policy)
    assert wait == policy.max_wait_s
    assert default_max_batch("cpu") == 1 and default_max_batch("cuda") > 1


def test_result_cache_expires_and_evicts():
    now = [0.0]
    cache = ResultCache(ttl_s=10, max_entries=2, clock=lambda: now[0])
    a = np.ones((80, 10), np.float32)
    key = feature_key(a, "en", "tiny.en@x")
    assert key == feature_key(a.copy(), "en", "tiny.en@x")
    assert key != feature_key(a, "de", "tiny.en@x") != feature_key(a * 2, "en", "tiny.en@x")
    cache.put(key, "hello")
    assert cache.get(key) == "hello"
    now[0] = 11.0
    assert cache.get(key) is None
    for i in range(3):
        cache.put(str(i), i)
    assert len(cache) == 2 and cache.get("0") is None and cache.get("2") == 2


def test_supersession_orders_revisions_and_finals():
    s = Supersession(max_keys=2)
    s.note("a/0", 10)
    assert not s.stale("a/0", 10)
    s.note("a/0", 20)
    assert s.stale("a/0", 10) and not s.stale("a/0", 20)
    s.note("a/0", FINAL_REV)
    assert s.stale("a/0", 20)
    assert not s.stale("b/0", 5) and not s.stale(None, 0)


def test_micro_batcher_groups_same_shapes_and_matches_single_calls(tiny_artifacts):
    from splitasr.cloud.shard.runtime import RuntimeOptions, StageRuntime

    runtime = StageRuntime(tiny_artifacts, RuntimeOptions(threads=1), stages=("enc_b",))
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, 100, 384)).astype(np.float32) for _ in range(4)]
    inputs.append(rng.standard_normal((1, 60, 384)).astype(np.float32))  # another shape: its own batch
    singles = [runtime.run("enc_b", x)[0] for x in inputs]
    calls: list[int] = []

    async def run_batch(stacked, priority):
        calls.append(stacked.shape[0])
        return runtime.run("enc_b", stacked)[0]

    async def main():
        batcher = MicroBatcher(run_batch, BatchPolicy(max_batch=4, initial_wait_s=0.05))
        deadline = time.perf_counter() + 10  # the batcher's clock
        return await asyncio.gather(*(batcher.submit(x, 1, deadline) for x in inputs)), batcher.sizes

    outputs, sizes = asyncio.run(main())
    assert sorted(calls) == [1, 4] and sizes == {4: 1, 1: 1}
    for out, single in zip(outputs, singles, strict=True):
        np.testing.assert_allclose(out, single, atol=1e-4)
