"""Routing policy: stage-0 candidates for a new stream, same zone first, power of two choices by load."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ShardView:
    """What the router needs to know about one stage-0 shard."""

    shard_id: str
    url: str
    pool: str  # e.g. "tiny.en"
    zone: str
    region: str
    queue_delay_s: float
    sessions: int
    capacity: int  # sessions it accepts before it counts as full
    available: bool = True  # breaker closed or half-open, not draining


@dataclass(frozen=True)
class RouteRequest:
    pool: str
    zone: str | None = None
    region: str | None = None


def _tier(shard: ShardView, request: RouteRequest) -> int:
    if request.zone is not None and shard.zone == request.zone:
        return 0
    if request.region is not None and shard.region == request.region:
        return 1
    return 2


QUEUE_DELAY_RESOLUTION_S = 0.025  # queue delays closer than this are ties, broken by session count


def delay_bucket(queue_delay_s: float) -> int:
    return int(queue_delay_s / QUEUE_DELAY_RESOLUTION_S)


def _load(shard: ShardView) -> tuple[int, float]:
    return delay_bucket(shard.queue_delay_s), shard.sessions / shard.capacity


def p2c_order(items: Sequence[T], load: Callable[[T], Any], rng: random.Random) -> list[T]:
    """Repeated power-of-two-choices: pick two at random, keep the one with the lower ``load``.

    Used by the router (stage-0 shards for a stream) and by every stage's client (a replica of the
    next stage per request)."""
    rest, out = list(items), []
    while rest:
        if len(rest) == 1:
            out.append(rest.pop())
            break
        a, b = rng.sample(range(len(rest)), 2)
        pick = a if load(rest[a]) <= load(rest[b]) else b
        out.append(rest.pop(pick))
    return out


def route(shards: Sequence[ShardView], request: RouteRequest, rng: random.Random | None = None) -> list[ShardView]:
    """Ordered candidates: zone, then region, then anywhere; full shards after those with room; no open breakers."""
    rng = rng or random.Random()
    usable = [s for s in shards if s.pool == request.pool and s.available]
    ordered: list[ShardView] = []
    full: list[ShardView] = []
    for tier in (0, 1, 2):
        in_tier = [s for s in usable if _tier(s, request) == tier]
        ordered += p2c_order([s for s in in_tier if s.sessions < s.capacity], _load, rng)
        full += p2c_order([s for s in in_tier if s.sessions >= s.capacity], _load, rng)
    return ordered + full
