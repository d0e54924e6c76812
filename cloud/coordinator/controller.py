"""The control loop of one pool: samples its load, asks the autoscaler, and makes it so.

Every decision period the controller ranks the pool's live stage-0 shards (routed ones and the
busiest first): the first ``replicas`` are routed, the next ``warm_spares`` are kept ready but get
no new streams, the rest are drained. Missing shards are started through the backend; their
measured cold start becomes the predictive lead time. A spare is promoted at once when the
autoscaler asks for more, so scaling out does not wait for a cold start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter, deque

from splitasr.cloud.coordinator.autoscaler import Decision, Sample, decide
from splitasr.cloud.coordinator.backend import Backend, ShardSpec
from splitasr.cloud.coordinator.config import PoolConfig
from splitasr.cloud.coordinator.registry import Registry, ShardRecord
from splitasr.shared.errors import ProcessStartError

log = logging.getLogger(__name__)


class PoolController:
    def __init__(self, pool: PoolConfig, registry: Registry, backend: Backend | None, period_s: float = 1.0):
        self.pool = pool
        self.config = dataclasses.replace(pool.autoscaler, decision_period_s=period_s)
        self.registry = registry
        self.backend = backend
        self.history: deque[Sample] = deque(maxlen=3600)
        self.decisions: deque[Decision] = deque(maxlen=600)
        self.changes: deque[Decision] = deque(maxlen=100)  # decisions that changed the replica count
        self.pinned: int | None = None  # `splitasr scale POOL N`
        self.starting = 0
        self.cold_starts: list[float] = []
        self.start_errors: list[str] = []
        self._started_seen: dict[str, int] = {}
        self._zone_turn = 0
        self._tasks: set[asyncio.Task] = set()

    # -- shards ---------------------------------------------------------------------------------
    def spec(self, stage: str, zone: str | None = None) -> ShardSpec:
        return ShardSpec(
            model=self.pool.model,
            stage=stage,
            zone=zone or self.pool.zones[0],
            region=self.pool.region,
            threads=self.pool.threads,
            int8=self.pool.int8,
            extra_args=self.pool.shard_args,
        )

    async def start_chain(self) -> None:
        """Decoder and encoder-B replicas, then the initial stage-0 replicas (with spares); shards the
        backend already has (adopted from the last coordinator) count."""
        have = Counter(h.spec.stage for h in self.backend.list() if h.spec.model == self.pool.model)
        for stage, count in (("dec", self.pool.dec), ("enc_b", self.pool.enc_b)):
            await asyncio.gather(*(self.backend.start(self.spec(stage)) for _ in range(count - have[stage])))
        initial = max(self.config.min_replicas, 1) + self.config.warm_spares
        await asyncio.gather(*(self._start_stage0() for _ in range(initial - have["enc_a"])))

    # -- persistence (the backend's state store, when it has one) --------------------------------
    def restore(self) -> None:
        """The pinned size and load history the last coordinator of this state left."""
        state = self.backend.state if self.backend is not None else None
        if state is None:
            return
        self.history.extend(Sample(**d) for d in state.samples(self.pool.model))
        pinned = state.get(f"pinned:{self.pool.model}")
        self.pinned = None if pinned in (None, "auto") else int(pinned)
        if self.history or self.pinned is not None:
            log.info("pool %s: restored %d samples, pinned %s", self.pool.model, len(self.history), self.pinned)

    def pin(self, replicas: int | None) -> None:
        """``splitasr scale POOL N`` (None: auto again); kept across coordinator restarts."""
        self.pinned = replicas
        if self.backend is not None and self.backend.state is not None:
            self.backend.state.put(f"pinned:{self.pool.model}", "auto" if replicas is None else str(replicas))

    async def _start_stage0(self) -> None:
        zone = self.pool.zones[self._zone_turn % len(self.pool.zones)]
        self._zone_turn += 1
        self.starting += 1
        try:
            handle = await self.backend.start(self.spec("enc_a", zone))
            if handle.cold_start_s is not None:
                self.cold_starts.append(handle.cold_start_s)
                recent = self.cold_starts[-5:]
                self.config = dataclasses.replace(self.config, cold_start_s=sum(recent) / len(recent))
        except ProcessStartError as exc:
            self.start_errors.append(str(exc))
            log.error("pool %s: could not start a shard: %s", self.pool.model, exc)
        finally:
            self.starting -= 1

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stage0(self, now: float) -> list[ShardRecord]:
        """Live stage-0 shards of the pool: breaker not open, not draining."""
        return [r for r in self.registry.shards(self.pool.model, "enc_a") if not r.draining and r.breaker.allows(now)]

    # -- control loop ---------------------------------------------------------------------------
    def sample(self, now: float) -> Sample:
        live = self.stage0(now)
        routed = [r for r in live if not r.spare]
        arrivals = 0
        for r in self.registry.shards(self.pool.model, "enc_a"):
            seen = self._started_seen.get(r.info.shard_id, 0)
            started = r.load.sessions_started
            arrivals += started - seen if started >= seen else started  # a restart resets the counter
            self._started_seen[r.info.shard_id] = started
        return Sample(
            t=now,
            sessions=sum(r.load.sessions for r in live),
            queue_delay_s=max((r.load.queue_delay_s for r in routed), default=0.0),
            arrivals=arrivals,
            replicas=len(routed),
        )

    def tick(self, now: float) -> Decision:
        """One decision period: sample, decide, assign routed/spare/drain, start what is missing."""
        sample = self.sample(now)
        self.history.append(sample)
        if self.backend is not None and self.backend.state is not None:
            self.backend.state.add_sample(self.pool.model, now, dataclasses.asdict(sample))
        decision = decide(self.config, list(self.history), now, list(self.decisions))
        if self.pinned is not None:
            decision = dataclasses.replace(decision, replicas=self.pinned, reason=f"pinned to {self.pinned}")
        previous = self.decisions[-1] if self.decisions else None
        self.decisions.append(decision)
        if previous is None or previous.replicas != decision.replicas:
            self.changes.append(decision)
            log.info("pool %s: %d replicas (%s)", self.pool.model, decision.replicas, decision.reason)
        self.apply(decision, now)
        return decision

    def apply(self, decision: Decision, now: float) -> None:
        live = sorted(self.stage0(now), key=lambda r: (r.spare, -r.load.sessions, r.registered_at))
        routed, rest = live[: decision.replicas], live[decision.replicas :]
        spares, extra = rest[: decision.warm_spares], rest[decision.warm_spares :]
        for r in routed:
            r.spare = False
        for r in spares:
            r.spare = True
        for r in extra:
            self.drain(r.info.shard_id)
        missing = decision.replicas + decision.warm_spares - len(live) - self.starting
        for _ in range(max(0, missing)):
            self._spawn(self._start_stage0())
        # forget shards that drained and went silent
        for r in self.registry.shards(self.pool.model):
            if r.draining and not r.breaker.allows(now):
                self.registry.remove(r.info.shard_id)

    def drain(self, shard_id: str) -> None:
        record = self.registry.records.get(shard_id)
        if record is None or record.draining:
            return
        record.draining = True
        if self.backend is not None:  # shards started by hand (no backend) exit on their own
            self.backend.expect_exit(shard_id)
        log.info("pool %s: draining %s (%d sessions)", self.pool.model, shard_id, record.load.sessions)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
