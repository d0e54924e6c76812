"""The coordinator's view of every shard: what it serves, where it is, its load and its breaker.

Driven by explicit times (``now``), so tests use a fake clock. Shards register once and heartbeat
every second with their load; silence opens the shard's breaker (see :mod:`.breaker`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from splitasr.cloud.coordinator.breaker import Breaker, BreakerConfig, BreakerState
from splitasr.cloud.coordinator.router import ShardView
from splitasr.shared.errors import ConfigError

STAGES = ("enc_a", "enc_b", "dec")


@dataclass(frozen=True)
class ShardInfo:
    """What a shard says about itself when it registers."""

    shard_id: str
    url: str
    model: str  # the pool: one model, e.g. "tiny.en" (English) or "base" (multilingual)
    stage: str  # enc_a (stage 0), enc_b or dec
    version: str = ""
    zone: str = "local"
    region: str = "local"
    capacity: int = 64  # sessions (stage 0)
    pid: int | None = None

    @classmethod
    def from_dict(cls, body: dict) -> ShardInfo:
        known = {f for f in cls.__dataclass_fields__}
        missing = [k for k in ("shard_id", "url", "model", "stage") if not body.get(k)]
        if missing:
            raise ConfigError(f"registration lacks {', '.join(missing)}")
        info = cls(**{k: v for k, v in body.items() if k in known})
        if info.stage not in STAGES:
            raise ConfigError(f"unknown stage {info.stage!r}; stages are {', '.join(STAGES)}")
        if not isinstance(info.capacity, int) or info.capacity < 1:
            raise ConfigError(f"capacity must be a positive integer, got {info.capacity!r}")
        return info


@dataclass
class ShardLoad:
    """What a shard reports in each heartbeat."""

    queue_delay_s: float = 0.0
    sessions: int = 0
    final_p50_ms: float = 0.0
    final_p95_ms: float = 0.0
    final_p99_ms: float = 0.0
    sessions_started: int = 0  # cumulative, for arrival rates
    overload_level: int = 0

    @classmethod
    def from_dict(cls, body: dict) -> ShardLoad:
        out = cls()
        for name in cls.__dataclass_fields__:
            if name in body:
                value = body[name]
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise ConfigError(f"heartbeat field {name} must be a number, got {value!r}")
                setattr(out, name, type(getattr(out, name))(value))
        return out


@dataclass
class ShardRecord:
    info: ShardInfo
    registered_at: float
    load: ShardLoad = field(default_factory=ShardLoad)
    breaker: Breaker = field(default_factory=Breaker)
    draining: bool = False
    spare: bool = False  # warm spare: ready, not routed to until promoted
    routed: int = 0  # streams sent here since its last heartbeat (not yet in its load)

    @property
    def sessions(self) -> int:
        """Sessions as far as routing knows: the last heartbeat's plus streams routed since."""
        return self.load.sessions + self.routed

    def to_dict(self, now: float) -> dict:
        return {
            **asdict(self.info),
            **asdict(self.load),
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

    def shards(self, model: str | None = None, stage: str | None = None) -> list[ShardRecord]:
        return [
            r
            for r in self.records.values()
            if (model is None or r.info.model == model) and (stage is None or r.info.stage == stage)
        ]

    def available(self, record: ShardRecord, now: float) -> bool:
        return record.breaker.allows(now) and not record.draining and not record.spare

    def views(self, model: str, stage: str, now: float) -> list[ShardView]:
        """Router input for one pool and stage."""
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
            for r in self.shards(model, stage)
        ]
