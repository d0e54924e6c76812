"""The coordinator's view of every shard: what it serves, where it is, its load and its breaker.

Driven by explicit times (``now``), so tests use a fake clock. Shards register once and heartbeat
every second with their load; silence opens the shard's breaker (see :mod:`.breaker`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from splitasr.cloud.coordinator.breaker import Breaker, BreakerConfig, BreakerState
from splitasr.cloud.coordinator.router import ShardView
from splitasr.shared.control import STAGES, ShardInfo, ShardLoad

__all__ = ["STAGES", "Registry", "ShardInfo", "ShardLoad", "ShardRecord"]


@dataclass
class ShardRecord:
    info: ShardInfo
    registered_at: float
    load: ShardLoad = field(default_factory=ShardLoad)
    breaker: Breaker = field(default_factory=Breaker)
    draining: bool = False
    drain_now: bool = False  # stage 0: move its sessions at once, not between utterances
    spare: bool = False  # warm spare: ready, not routed to until promoted
    routed: int = 0  # streams sent here since its last heartbeat (not yet in its load)

    @property
    def sessions(self) -> int:
        """Sessions as far as routing knows: the last heartbeat's plus streams routed since."""
        return self.load.sessions + self.routed

    def to_dict(self, now: float) -> dict:
        return {
            **self.info.model_dump(),
            **self.load.model_dump(),
            "breaker": self.breaker.tick(now).value,
            "breaker_reason": self.breaker.reason,
            "draining": self.draining,
            "spare": self.spare,
            "routed": self.routed,
            "heartbeat_age_s": round(now - self.breaker.last_heartbeat, 3),
        }


class Registry:
    def __init__(self, breaker: BreakerConfig = BreakerConfig()):
        self.breaker_config = breaker
        self.records: dict[str, ShardRecord] = {}

    def register(self, info: ShardInfo, now: float, spare: bool = False) -> ShardRecord:
        record = self.records.get(info.shard_id)
        if record is None or record.info != info:
            record = ShardRecord(info, now, breaker=Breaker(self.breaker_config), spare=spare)
            self.records[info.shard_id] = record
        record.breaker.heartbeat(now)
        record.breaker.success(now)
        return record

    def heartbeat(self, shard_id: str, load: ShardLoad, now: float) -> ShardRecord | None:
        """Record a heartbeat; None when the shard is unknown (it should register again)."""
        record = self.records.get(shard_id)
        if record is None:
            return None
        record.load = load
        record.routed = 0
        record.breaker.heartbeat(now)
        if record.breaker.state is BreakerState.HALF_OPEN:
            record.breaker.success(now)
        return record

    def remove(self, shard_id: str) -> ShardRecord | None:
        return self.records.pop(shard_id, None)

    def shards(
        self, model: str | None = None, stage: str | None = None, version: str | None = None
    ) -> list[ShardRecord]:
        """Shards of one pool (model), stage and pool version; None: any."""
        return [
            r
            for r in self.records.values()
            if (model is None or r.info.model == model)
            and (stage is None or r.info.stage == stage)
            and (version is None or r.info.config_version == version)
        ]

    def available(self, record: ShardRecord, now: float) -> bool:
        return record.breaker.allows(now) and not record.draining and not record.spare

    def views(self, model: str, stage: str, now: float, version: str | None = None) -> list[ShardView]:
        """Router input for one pool, stage and version."""
        return [
            ShardView(
                shard_id=r.info.shard_id,
                url=r.info.url,
                pool=r.info.model,
                zone=r.info.zone,
                region=r.info.region,
                queue_delay_s=r.load.queue_delay_s,
                sessions=r.sessions,
                capacity=r.info.capacity,
                available=self.available(r, now),
            )
            for r in self.shards(model, stage, version)
        ]
