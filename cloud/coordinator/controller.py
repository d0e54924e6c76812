"""The control loop of one model's pool: every stage (encoder A, encoder B, decoder) is a pool of its
own, sampled, decided by the same autoscaler code and made so.

Every decision period, for each stage, the controller ranks the stage's live shards (routed ones
and the busiest first): the first ``replicas`` are routed, the next ``warm_spares`` are kept ready
but get no work, the rest are drained (a stage-0 shard moves its sessions off between utterances;
a later stage leaves the route answers, finishes what it holds and exits). Missing shards are
started through the backend; their measured cold start becomes the stage's predictive lead time.
A spare is promoted at once when the autoscaler asks for more, so scaling out does not wait for a
cold start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter, deque

from splitasr.cloud.coordinator.autoscaler import AutoscalerConfig, Decision, Sample, decide, session_load
from splitasr.cloud.coordinator.backend import Backend, ShardSpec
from splitasr.cloud.coordinator.config import DEFAULT_VERSION, PoolConfig
from splitasr.cloud.coordinator.registry import STAGES, Registry, ShardRecord
from splitasr.shared.errors import ProcessStartError

log = logging.getLogger(__name__)

START_ORDER = ("dec", "enc_b", "enc_a")  # a stage's next stage is up before it asks for it


class StagePool:
    """One stage's autoscaling state: its samples, decisions, pin and measured cold starts."""

    def __init__(
        self, model: str, stage: str, config: AutoscalerConfig, history: int = 3600, version: str = DEFAULT_VERSION
    ):
        self.model = model
        self.stage = stage
        self.version = version
        self.config = config
        self.history: deque[Sample] = deque(maxlen=history)  # samples kept (one per period)
        self.decisions: deque[Decision] = deque(maxlen=600)
        self.changes: deque[Decision] = deque(maxlen=100)  # decisions that changed the replica count
        self.pinned: int | None = None  # `splitasr scale POOL N [--stage S]`
        self.starting = 0
        self.cold_starts: list[float] = []
        self.zone_turn = 0

    @property
    def key(self) -> str:
        """Its name in the state store (stage 0 keeps the pool's name, as before stages scaled; a
        version other than the default is named after ``@``)."""
        name = self.model if self.version == DEFAULT_VERSION else f"{self.model}@{self.version}"
        return name if self.stage == "enc_a" else f"{name}/{self.stage}"

    def measured_cold_start(self, seconds: float) -> None:
        self.cold_starts.append(seconds)
        recent = self.cold_starts[-5:]
        self.config = dataclasses.replace(self.config, cold_start_s=sum(recent) / len(recent))

    def decide(self, sample: Sample, now: float) -> Decision:
        self.history.append(sample)
        decision = decide(self.config, list(self.history), now, list(self.decisions))
        if self.pinned is not None:
            decision = dataclasses.replace(decision, replicas=self.pinned, reason=f"pinned to {self.pinned}")
        previous = self.decisions[-1] if self.decisions else None
        self.decisions.append(decision)
        if previous is None or previous.replicas != decision.replicas:
            self.changes.append(decision)
            log.info("pool %s %s: %d replicas (%s)", self.model, self.stage, decision.replicas, decision.reason)
        return decision


class PoolController:
    def __init__(self, pool: PoolConfig, registry: Registry, backend: Backend | None, period_s: float = 1.0):
        self.pool = pool
        self.registry = registry
        self.backend = backend
        self.stages = {
            stage: StagePool(
                pool.model,
                stage,
                dataclasses.replace(pool.autoscaler_for(stage), decision_period_s=period_s),
                version=pool.version,
            )
            for stage in (("enc_a",) if pool.whole_chain else STAGES)
        }
        # a version on its way out starts nothing: "now" (rolled back, aborted: its sessions move at
        # once) or "between utterances" (replaced by a promotion); None while it serves
        self.retiring: str | None = None
        self.start_errors: list[str] = []
        self._started_seen: dict[str, int] = {}
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
            extra_args=self.pool.shard_args + (("--whole-chain",) if self.pool.whole_chain else ()),
            version=self.pool.version,
        )

    def mine(self, handle_spec: ShardSpec) -> bool:
        """A backend handle's spec belongs to this pool version."""
        return handle_spec.model == self.pool.model and handle_spec.version == self.pool.version

    def records(self, stage: str | None = None) -> list[ShardRecord]:
        """The registry's shards of this pool version (``stage`` None: every stage)."""
        return self.registry.shards(self.pool.model, stage, self.pool.version)

    async def start_chain(self) -> None:
        """Each stage's initial replicas (minimum, at least one, plus warm spares), decoder first;
        shards the backend already has (adopted from the last coordinator) count."""
        have = Counter(h.spec.stage for h in self.backend.list() if self.mine(h.spec))
        for stage in (s for s in START_ORDER if s in self.stages):
            config = self.stages[stage].config
            initial = max(config.min_replicas, 1) + config.warm_spares
            await asyncio.gather(*(self._start(stage) for _ in range(initial - have[stage])))

    async def _start(self, stage: str) -> None:
        pool = self.stages[stage]
        zone = self.pool.zones[pool.zone_turn % len(self.pool.zones)]
        pool.zone_turn += 1
        pool.starting += 1
        try:
            handle = await self.backend.start(self.spec(stage, zone))
            if handle.cold_start_s is not None:
                pool.measured_cold_start(handle.cold_start_s)
        except ProcessStartError as exc:
            self.start_errors.append(str(exc))
            log.error("pool %s: could not start a %s shard: %s", self.pool.model, stage, exc)
        finally:
            pool.starting -= 1

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def starting(self, stage: str) -> int:
        """Shards of ``stage`` on their way: the ones this controller is starting, and the ones the
        backend restarts under their old id (a crashed process, a lost Ray node), which it does not
        start a second replacement for."""
        restarting = sum(
            1
            for h in (self.backend.list() if self.backend is not None else ())
            if self.mine(h.spec) and h.spec.stage == stage and h.state == "starting" and h.restarts
        )
        return self.stages[stage].starting + restarting

    def live(self, stage: str, now: float) -> list[ShardRecord]:
        """Live shards of one stage of the pool: breaker not open, not draining."""
        return [r for r in self.records(stage) if not r.draining and r.breaker.allows(now)]

    # -- persistence (the backend's state store, when it has one) --------------------------------
    def restore(self) -> None:
        """The pinned sizes and load history the last coordinator of this state left."""
        state = self.backend.state if self.backend is not None else None
        if state is None:
            return
        for pool in self.stages.values():
            pool.history.extend(Sample(**d) for d in state.samples(pool.key))
            pinned = state.get(f"pinned:{pool.key}")
            pool.pinned = None if pinned in (None, "auto") else int(pinned)
            if pool.history or pool.pinned is not None:
                log.info("pool %s: restored %d samples, pinned %s", pool.key, len(pool.history), pool.pinned)

    def pin(self, replicas: int | None, stage: str = "enc_a") -> None:
        """``splitasr scale POOL N [--stage S]`` (None: auto again); kept across coordinator restarts."""
        pool = self.stages[stage]
        pool.pinned = replicas
        if self.backend is not None and self.backend.state is not None:
            self.backend.state.put(f"pinned:{pool.key}", "auto" if replicas is None else str(replicas))

    # -- control loop ---------------------------------------------------------------------------
    def _arrivals(self) -> int:
        """New sessions across the pool's stage-0 shards since the last period."""
        arrivals = 0
        for r in self.records("enc_a"):
            seen = self._started_seen.get(r.info.shard_id, 0)
            started = r.load.sessions_started
            arrivals += started - seen if started >= seen else started  # a restart resets the counter
            self._started_seen[r.info.shard_id] = started
        return arrivals

    def sample(self, stage: str, now: float, sessions: float, arrivals: int) -> Sample:
        """One stage's sample: the pool's sessions and arrivals, this stage's queue delay and work."""
        routed = [r for r in self.live(stage, now) if not r.spare]
        return Sample(
            t=now,
            sessions=sessions,
            queue_delay_s=max((r.load.queue_delay_s for r in routed), default=0.0),
            arrivals=arrivals,
            replicas=len(routed),
            busy=sum(max(r.load.busy, r.load.occupancy) for r in routed),
        )

    def tick(self, now: float) -> dict[str, Decision]:
        """One decision period for every stage: sample, decide, assign routed/spare/drain, start."""
        loads = [(r.load.sessions, r.load.batch_sessions) for r in self.live("enc_a", now)]
        sessions = session_load(self.stages["enc_a"].config, loads)
        arrivals = self._arrivals()
        state = self.backend.state if self.backend is not None else None
        decisions = {}
        if self.retiring:  # its shards are drained stage by stage (rollouts.py); nothing to decide
            return decisions
        for stage, pool in self.stages.items():
            sample = self.sample(stage, now, sessions, arrivals)
            if state is not None:
                state.add_sample(pool.key, now, dataclasses.asdict(sample))
            decisions[stage] = pool.decide(sample, now)
            self.apply(stage, decisions[stage], now)
        return decisions

    def apply(self, stage: str, decision: Decision, now: float) -> None:
        live = sorted(self.live(stage, now), key=lambda r: (r.spare, -r.load.sessions, r.registered_at))
        routed, rest = live[: decision.replicas], live[decision.replicas :]
        spares, extra = rest[: decision.warm_spares], rest[decision.warm_spares :]
        for r in routed:
            r.spare = False
        for r in spares:
            r.spare = True
        for r in extra:
            self.drain(r.info.shard_id)
        missing = decision.replicas + decision.warm_spares - len(live) - self.starting(stage)
        for _ in range(max(0, missing)):
            self._spawn(self._start(stage))

    def drain(self, shard_id: str, now: bool = False) -> None:
        """Route nothing more to a shard and let it go (``now``: stage 0 moves its sessions at once)."""
        record = self.registry.records.get(shard_id)
        if record is None:
            return
        if now:
            record.drain_now = True
        if record.draining:
            return
        record.draining = True
        if self.backend is not None:  # shards started by hand (no backend) exit on their own
            self.backend.expect_exit(shard_id)
        log.info("pool %s: draining %s (%d sessions)", self.pool.model, shard_id, record.load.sessions)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
