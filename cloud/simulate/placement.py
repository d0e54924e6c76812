"""Zones and failure detection in the simulator, through the coordinator's own router and breaker.

- **Zones**: the controller starts stage-0 replicas round-robin over the pool's zones, so ``n``
  replicas are spread evenly. Each zone's sessions (its share of the load) are placed by
  ``router.route`` over one aggregated view per zone (capacity = its replicas x sessions each):
  same zone first, then other zones by power of two choices on their load, full zones last.
  Sessions served from another zone pay ``cross_zone_s`` on their FINAL (the extra hops).
- **Breaker**: a crashed replica is seen by the backend at once (the breaker trips); a hung one
  only by heartbeat silence. How long that takes is found by driving a ``Breaker`` with a fake
  clock: heartbeats every period, a hang at every phase between two of them.
"""

from __future__ import annotations

import random

from splitasr.cloud.coordinator.breaker import Breaker, BreakerConfig, BreakerState
from splitasr.cloud.coordinator.router import RouteRequest, ShardView, route

POOL = "sim"


def spread(replicas: int, zones: int) -> list[int]:
    """Replicas per zone when they are started round-robin over ``zones`` zones."""
    return [replicas // zones + (1 if z < replicas % zones else 0) for z in range(zones)]


def cross_zone_share(
    sessions: float, shares: dict[str, float], replicas: int, per_replica: int, rng: random.Random
) -> float:
    """Share of ``sessions`` the router places outside their own zone (0 with a single zone)."""
    if len(shares) < 2 or sessions <= 0:
        return 0.0
    zones = list(shares)
    room = dict(zip(zones, (n * per_replica for n in spread(replicas, len(zones))), strict=True))
    placed = dict.fromkeys(zones, 0.0)
    away = 0.0
    for zone in sorted(zones, key=lambda z: -shares[z]):
        left = sessions * shares[zone]
        while left > 1e-9:
            views = [
                ShardView(z, z, POOL, z, POOL, 0.0, int(placed[z]), max(1, int(room[z])), available=room[z] > 0)
                for z in zones
            ]
            free = [v for v in route(views, RouteRequest(POOL, zone=zone), rng) if placed[v.zone] < room[v.zone]]
            if not free:
                break  # no room anywhere: those sessions wait for stage 0 (the engine's admission queue)
            target = free[0].zone
            take = min(left, room[target] - placed[target])
            placed[target] += take
            left -= take
            away += take if target != zone else 0.0
    return away / sessions


def hang_detection_s(config: BreakerConfig | None = None, heartbeat_s: float = 1.0, steps: int = 20) -> float:
    """Mean time from a replica hanging to its breaker opening on heartbeat silence."""
    total = 0.0
    for k in range(steps):
        breaker = Breaker(config or BreakerConfig())
        breaker.heartbeat(0.0)
        hung_at = heartbeat_s * k / steps  # the last heartbeat came at 0, the next never does
        t = hung_at
        while breaker.tick(t) is not BreakerState.OPEN:
            t += 0.01
        total += t - hung_at
    return total / steps
