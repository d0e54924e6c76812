"""The coordinator's rollouts: canary pool versions started, measured, promoted or rolled back.

Each pool has a stable version (its controller in ``Coordinator.controllers``). A rollout adds a
second :class:`PoolController` for the canary version, with its own shards of every stage; new
sessions go to it by the rollout's share (:func:`rollout.to_canary`), the rest stays on stable.
Every decision period :func:`rollout.evaluate` judges the canary against stable on what each
answered since the step began. Promotion makes the canary the stable controller; a rollback or an
abort retires the canary. A retired version drains stage by stage: stage 0 first (its sessions
move to the other version between utterances, see DRAIN), its encoder B once stage 0 is gone,
its decoder last, so nothing in flight loses its next stage.

A pool with a probe set (``probe:``, see probe.py) has both versions' WER on its clips measured
once per step, by a task of the coordinator's loop; the step waits for both scores.

Rollouts, the stable version of each pool and the decision log live in the coordinator's state
store (SQLite), so a restarted coordinator resumes a running rollout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable

from splitasr.cloud.coordinator.config import PoolConfig
from splitasr.cloud.coordinator.controller import START_ORDER, PoolController
from splitasr.cloud.coordinator.probe import Prober, ProbeResult
from splitasr.cloud.coordinator.registry import Registry
from splitasr.cloud.coordinator.rollout import (
    PROMOTED,
    RUNNING,
    Guards,
    Rollout,
    VersionStats,
    evaluate,
    to_canary,
)
from splitasr.cloud.coordinator.state import StateStore
from splitasr.shared.errors import ConfigError

log = logging.getLogger(__name__)

PROBE_RETRY_S = 5.0
PROBE_SETTLE_S = 3.0  # a new chain's stages learn their next stage's replicas within a few heartbeats
RETIRE_ORDER = tuple(reversed(START_ORDER))  # enc_a, enc_b, dec: a stage goes once the one before it is gone


class Rollouts:
    def __init__(
        self,
        pools: dict[str, PoolConfig],
        registry: Registry,
        controllers: dict[str, PoolController],  # the stable one of each pool (replaced on promotion)
        make_controller: Callable[[PoolConfig], PoolController],
        clock: Callable[[], float],
        on_note: Callable[[dict], None] | None = None,  # each decision log entry, as it is written
        probers: dict[str, Prober] | None = None,  # pools with a probe set
        spot: dict[str, PoolController] | None = None,  # pools' spot replicas (a version of their own)
    ):
        self.pools = pools
        self.registry = registry
        self.controllers = controllers
        self.make_controller = make_controller
        self.clock = clock
        self.on_note = on_note
        self.state: StateStore | None = None
        self.rollouts: dict[str, Rollout] = {}  # the latest of each pool, finished ones too
        self.canaries: dict[str, PoolController] = {}
        self.retired: list[PoolController] = []
        self.log: deque[dict] = deque(maxlen=200)
        self._baseline: dict[str, tuple[int, int, int]] = {}  # shard id -> counters at the step's start
        self.probers = probers or {}
        self.spot = spot or {}
        self.probes: dict[str, dict[str, ProbeResult]] = {}  # pool -> "canary"/"stable" -> this step's score
        self._probing: dict[str, asyncio.Task] = {}
        self._probe_after: dict[str, float] = {}  # pool -> no new probe before (after a failed one)

    # -- state ----------------------------------------------------------------------------------
    def restore(self, state: StateStore | None) -> None:
        """The stable versions, rollouts and decision log the last coordinator of ``state`` left."""
        self.state = state
        if state is None:
            return
        for model, pool in self.pools.items():
            stable = state.get(f"stable:{model}")
            if stable and stable != self.controllers[model].pool.version:
                self.controllers[model] = self.make_controller(pool.for_version(stable))
                log.info("pool %s: stable version %s (promoted earlier)", model, stable)
        for raw in state.rollouts():
            r = Rollout.from_dict(raw)
            self.rollouts[r.pool] = r
            if r.status == RUNNING and r.pool in self.pools:
                # the step clock restarts; the probe follows the pool's config as it is now
                self.rollouts[r.pool] = dataclasses.replace(r, step_started=None, probe=r.pool in self.probers)
                self.canaries[r.pool] = self.make_controller(self.pools[r.pool].for_version(r.canary))
                log.info("pool %s: resuming the rollout to %s at %d%%", r.pool, r.canary, r.steps[r.step])
        self.log.extend(state.decisions())

    def _save(self, r: Rollout) -> None:
        self.rollouts[r.pool] = r
        if self.state is not None:
            self.state.put_rollout(r.pool, r.to_dict())

    def _note(self, pool: str, event: str, detail: str) -> None:
        entry = {"time": time.time(), "pool": pool, "event": event, "detail": detail}
        self.log.append(entry)
        if self.state is not None:
            self.state.add_decision(entry)
        if self.on_note is not None:
            self.on_note(entry)
        log.warning("rollout of %s: %s %s", pool, event, detail)

    # -- commands -------------------------------------------------------------------------------
    def start(self, model: str, to: str, steps: tuple[int, ...], interval_s: float, guards: Guards) -> Rollout:
        if model not in self.pools:
            raise ConfigError(f"no pool {model!r}; pools are {', '.join(self.pools)}")
        current = self.rollouts.get(model)
        if current is not None and current.status == RUNNING:
            raise ConfigError(f"pool {model} is already rolling out {current.canary}; abort or promote it first")
        stable = self.controllers[model].pool.version
        if to == stable:
            raise ConfigError(f"pool {model} already runs version {to}")
        canary = self.make_controller(self.pools[model].for_version(to))  # ConfigError for an unknown version
        self.canaries[model] = canary
        probe = model in self.probers
        r = Rollout(model, stable, to, tuple(steps), interval_s, guards, started=self.clock(), probe=probe)
        self._save(r)
        self._note(model, "started", f"{stable} -> {to}, steps {','.join(map(str, steps))}%, every {interval_s:g} s")
        if canary.backend is not None:
            canary._spawn(canary.start_chain())
        return r

    def abort(self, model: str, reason: str = "aborted by an operator") -> Rollout:
        r = self._running(model)
        self._finish(dataclasses.replace(r, status="aborted", reason=reason), "aborted", reason)
        return self.rollouts[model]

    def promote(self, model: str) -> Rollout:
        r = self._running(model)
        self._finish(dataclasses.replace(r, status=PROMOTED, reason="promoted by an operator"), PROMOTED, "by hand")
        return self.rollouts[model]

    def _running(self, model: str) -> Rollout:
        r = self.rollouts.get(model)
        if r is None or r.status != RUNNING:
            raise ConfigError(f"pool {model!r} has no running rollout")
        return r

    def _finish(self, r: Rollout, event: str, detail: str) -> None:
        canary = self.canaries.pop(r.pool)
        self._stop_probe(r.pool)
        if r.status == PROMOTED:
            old, self.controllers[r.pool] = self.controllers[r.pool], canary
            self._retire(old)
            if self.state is not None:
                self.state.put(f"stable:{r.pool}", r.canary)
        else:
            self._retire(canary, urgent=True)
        self._save(r)
        self._note(r.pool, event, detail)

    def _retire(self, controller: PoolController, urgent: bool = False) -> None:
        """Drain a version: ``urgent`` (rolled back, aborted) moves its sessions at once, open
        utterances included (the edges replay them); otherwise between utterances."""
        controller.retiring = "now" if urgent else "between utterances"
        self.retired.append(controller)

    # -- routing --------------------------------------------------------------------------------
    def controller_for_stream(self, model: str, session: str | None, rng) -> PoolController:
        """The version a new stream of pool ``model`` goes to: the canary by the rollout's share (by
        session id, so a reconnecting session keeps its version), else stable."""
        r, canary = self.rollouts.get(model), self.canaries.get(model)
        if r is None or canary is None or r.share <= 0:
            return self.controllers[model]
        key = session or f"anonymous-{rng.random()}"
        return canary if to_canary(key, r.share) else self.controllers[model]

    def version_controller(self, model: str, version: str | None) -> PoolController | None:
        """The controller of a pool version (None: the stable one), retired ones included."""
        if version is None:
            return self.controllers.get(model)
        for c in [self.controllers.get(model), self.canaries.get(model), self.spot.get(model), *self.retired]:
            if c is not None and c.pool.model == model and c.pool.version == version:
                return c
        return None

    def all_controllers(self) -> list[PoolController]:
        return [*self.controllers.values(), *self.canaries.values(), *self.spot.values(), *self.retired]

    # -- the control loop -----------------------------------------------------------------------
    def stats(self, controller: PoolController, fresh: bool) -> VersionStats:
        """What a version's stage-0 shards answered since the step's baseline (``fresh``: take a new one)."""
        finals = empty = errors = 0
        p99 = 0.0
        for rec in controller.records("enc_a"):
            now = (rec.load.finals, rec.load.empty_finals, rec.load.final_errors)
            if fresh:
                self._baseline[rec.info.shard_id] = now
            base = self._baseline.setdefault(rec.info.shard_id, (0, 0, 0))
            if any(n < b for n, b in zip(now, base, strict=True)):  # restarted: its counters began again
                base = self._baseline[rec.info.shard_id] = (0, 0, 0)
            finals, empty, errors = finals + now[0] - base[0], empty + now[1] - base[1], errors + now[2] - base[2]
            if now[0] > base[0]:
                p99 = max(p99, rec.load.final_p99_ms)
        return VersionStats(finals, empty, errors, p99)

    def tick(self, now: float) -> None:
        for model, canary in list(self.canaries.items()):
            r = self.rollouts[model]
            stable = self.controllers[model]
            # serving: every stage of its chain has a replica up (stage 0 alone would fail its utterances)
            serving = all(any(not rec.spare for rec in canary.live(stage, now)) for stage in canary.stages)
            scores = self.probes.get(model, {})
            judged = [
                dataclasses.replace(self.stats(c, False), probe_wer=scores[k].wer if k in scores else None)
                for k, c in (("canary", canary), ("stable", stable))
            ]
            step = evaluate(r, *judged, now, serving)
            if step.event is not None and step.rollout.status == RUNNING:
                self.stats(canary, True)  # the new step is judged on its own: fresh baselines
                self.stats(stable, True)
                self._stop_probe(model)  # ... and probed anew
                self._save(step.rollout)
                self._note(model, step.event, step.detail)
            elif step.event is not None:
                self._finish(step.rollout, step.event, step.detail)
                continue
            self._probe(model, now)
        self._drain_retired(now)

    # -- the WER probe (probe.py) ---------------------------------------------------------------
    def _probe(self, model: str, now: float) -> None:
        """Start this step's probe of both versions unless it ran, runs, or failed a moment ago."""
        r = self.rollouts[model]
        if not r.probe or r.step_started is None or model not in self.probers:
            return
        task = self._probing.get(model)
        if (task is not None and not task.done()) or len(self.probes.get(model, {})) == 2:
            return
        if now < max(self._probe_after.get(model, 0.0), r.step_started + PROBE_SETTLE_S):
            return
        self._probing[model] = asyncio.get_running_loop().create_task(self._run_probe(model, now))

    async def _run_probe(self, model: str, now: float) -> None:
        versions = {"canary": self.canaries[model], "stable": self.controllers[model]}
        scores = self.probes.setdefault(model, {})
        try:
            for name, controller in versions.items():
                if name in scores:
                    continue
                shard = next((rec for rec in controller.live("enc_a", now) if not rec.spare), None)
                if shard is None:
                    raise RuntimeError(f"no serving stage-0 shard of the {name} version")
                scores[name] = await self.probers[model].run(shard.info.shard_id, shard.info.url)
            self._note(model, "probed", f"WER canary {scores['canary'].summary()}; stable {scores['stable'].summary()}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a shard that failed mid-probe: the next tick tries again after a pause
            self._probe_after[model] = self.clock() + PROBE_RETRY_S
            log.warning("rollout of %s: probe failed (%r); again in %.0f s", model, exc, PROBE_RETRY_S)

    def _stop_probe(self, model: str) -> None:
        task = self._probing.pop(model, None)
        if task is not None:
            task.cancel()
        self.probes.pop(model, None)
        self._probe_after.pop(model, None)

    def _drain_retired(self, now: float) -> None:
        """Drain retired versions stage by stage; forget a retired version once all its shards are gone."""
        for controller in list(self.retired):
            for stage in RETIRE_ORDER:
                records = controller.records(stage)
                for rec in records:
                    controller.drain(rec.info.shard_id, now=controller.retiring == "now")
                if records:
                    break
            else:
                self.retired.remove(controller)
                log.info("pool %s: version %s retired", controller.pool.model, controller.pool.version)

    def status(self) -> dict:
        return {
            "rollouts": [
                {
                    **r.to_dict(),
                    "canary_shards": len(self.canaries[r.pool].records()) if r.pool in self.canaries else 0,
                    "probe": {k: dataclasses.asdict(v) for k, v in self.probes.get(r.pool, {}).items()},
                }
                for r in self.rollouts.values()
            ],
            "log": list(self.log)[-50:],
            "stable": {m: c.pool.version for m, c in self.controllers.items()},
        }
