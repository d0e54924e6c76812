"""Routing tiers and P2C, and the circuit breaker with a fake clock."""

from __future__ import annotations

import random
from collections import Counter

from splitasr.cloud.coordinator.breaker import Breaker, BreakerConfig, BreakerState
from splitasr.cloud.coordinator.router import RouteRequest, ShardView, route


def shard(i, zone, region="r1", delay=0.0, sessions=0, capacity=8, available=True, pool="tiny.en"):
    return ShardView(f"s{i}", f"ws://127.0.0.1:{9000 + i}", pool, zone, region, delay, sessions, capacity, available)


def test_same_zone_first_then_region_then_anywhere():
    shards = [shard(1, "b", "r1"), shard(2, "a", "r1"), shard(3, "c", "r2"), shard(4, "a", "r1", pool="base")]
    order = [s.shard_id for s in route(shards, RouteRequest("tiny.en", zone="a", region="r1"), random.Random(0))]
    assert order == ["s2", "s1", "s3"]


def test_full_zone_spills_to_the_next_tier():
    shards = [shard(1, "a", sessions=8), shard(2, "b")]
    order = [s.shard_id for s in route(shards, RouteRequest("tiny.en", zone="a", region="r1"), random.Random(0))]
    assert order == ["s2", "s1"]  # zone a has no room: zone b first, the full one stays as a last resort


def test_open_breakers_are_skipped():
    shards = [shard(1, "a", available=False), shard(2, "a")]
    assert [s.shard_id for s in route(shards, RouteRequest("tiny.en", zone="a"))] == ["s2"]


def test_p2c_prefers_the_less_loaded_shard():
    shards = [shard(1, "a", delay=0.5), shard(2, "a", delay=0.01), shard(3, "a", delay=0.3)]
    rng = random.Random(3)
    firsts = Counter(route(shards, RouteRequest("tiny.en", zone="a"), rng)[0].shard_id for _ in range(300))
    assert firsts["s2"] > firsts["s3"] > firsts["s1"] == 0  # the worst of three never wins a pair as first


def test_breaker_opens_on_failures_and_probes_half_open():
    b = Breaker(BreakerConfig(failure_threshold=3, open_for_s=5.0, heartbeat_timeout_s=2.0))
    b.heartbeat(0.0)
    for t in (0.1, 0.2):
        b.failure(t)
    assert b.allows(0.3)
    b.failure(0.3)
    b.heartbeat(0.5)
    assert not b.allows(1.0) and b.state is BreakerState.OPEN
    b.heartbeat(5.0)
    assert b.allows(5.4) and b.state is BreakerState.HALF_OPEN  # one probe
    b.failure(5.5)
    assert not b.allows(5.6)  # the probe failed: open again
    b.heartbeat(10.5)
    assert b.allows(10.6)
    b.success(10.7)
    assert b.state is BreakerState.CLOSED


def test_breaker_opens_on_heartbeat_silence_within_two_seconds():
    b = Breaker(BreakerConfig(heartbeat_timeout_s=2.0))
    b.heartbeat(0.0)
    assert b.allows(1.9)
    assert not b.allows(2.01) and b.reason == "heartbeat silence"
    b.heartbeat(3.0)  # it speaks again: half-open until a call succeeds
    assert b.state is BreakerState.HALF_OPEN and b.allows(3.0)
