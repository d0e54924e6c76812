"""The simulation: per-second load through three stage pools under one scaling policy.

Each second, for each stage: the work of the streams speaking (:class:`ServiceModel`), replica
failures and spot pre-emptions (Poisson, seeded; a lost replica is restarted after a cold start, as
the local backend does), the queueing delay, and the policy's decision (more replicas are ready one
cold start later; fewer leave at once). Stage 0 also holds sessions (``max_sessions`` each):
sessions beyond that are refused, and their edges retry (``RECONNECT_S`` apart on average) with
their audio kept: the FINALs due from sessions still waiting (the newest ones, whose utterances the
session profile says have ended by their age) are late by the time they have waited plus a retry;
the others are not delayed. (An earlier version counted a share of *every* session's FINALs as lost
while any session waited, which the edge does not do.) Each second's FINALs get a latency per
utterance-length quantile: the FINAL is computed ``speculate_s`` into the pause, so it arrives at
``lag + max(endpoint, speculate + own compute + queueing at every stage)`` after the speech ends
(``lag``: the edge's endpointing lag, measured); a FINAL in flight on a replica that failed pays
its compute and a reconnect again, and for a hang (``hang_share`` of failures) the time the
coordinator's breaker takes to see it. With ``zones``, stage-0 replicas are spread over them and
the coordinator's router places each zone's sessions (:mod:`.placement`); those served from another
zone pay ``cross_zone_s``. Every session of a trace starts at or after its first row, so the first
``warmup_s`` (300 s) fill the pools and are not counted in the results.

Policies, per stage, all with the same targets (``Options``; by default 40 sessions per stage-0
replica, about 0.6 of its 64-session limit, and 0.6 busy cores per encoder-B or decoder replica),
no replica limit.
``hybrid`` is the coordinator's own ``StagePool`` (its autoscaler, no copy); ``hpa``, ``kpa`` and
``ray`` are :mod:`.baselines`; ``oracle`` knows each second's load in hindsight and has the fewest
replicas that keep every stage's queueing within its share of the SLO, with no cold start;
``static`` holds the oracle's peak all along.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import deque
from dataclasses import dataclass

import numpy as np

from splitasr.cloud.coordinator.autoscaler import AutoscalerConfig, Sample
from splitasr.cloud.coordinator.config import PoolConfig
from splitasr.cloud.coordinator.controller import StagePool
from splitasr.cloud.simulate.baselines import HPA, KPA, Observation, RayServe
from splitasr.cloud.simulate.placement import cross_zone_share, hang_detection_s
from splitasr.cloud.simulate.service import ServiceModel
from splitasr.cloud.simulate.workload import Profile, speech_per_second
from splitasr.shared.control import STAGES
from splitasr.shared.errors import ConfigError

POLICIES = ("static", "hpa", "kpa", "ray", "hybrid", "oracle")
RECONNECT_S = 1.0  # a FINAL lost with its replica: the edge reconnects and replays


@dataclass(frozen=True)
class Load:
    """Per-second totals of a trace through the session model."""

    arrivals: np.ndarray
    sessions: np.ndarray
    speaking: np.ndarray
    finals: np.ndarray

    @classmethod
    def of(cls, arrival_times: np.ndarray, profile: Profile) -> Load:
        seconds = int(math.ceil(arrival_times[-1])) + 1 + profile.active.size if arrival_times.size else 1
        arrivals = np.bincount(np.floor(arrival_times).astype(np.int64), minlength=seconds)[:seconds].astype(float)
        sessions, speaking, finals = profile.per_second(arrivals)
        return cls(arrivals, sessions, speaking, finals)

    @classmethod
    def of_sessions(
        cls, starts: np.ndarray, start: np.ndarray, end: np.ndarray, owner: np.ndarray, endpoint_s: float
    ) -> Load:
        """Exact totals of given sessions (session ``starts``; utterance ``start``/``end`` from their
        session's start, ``owner`` the session of each), e.g. to replay the same sessions as a real run."""
        first, last = starts[owner] + start, starts[owner] + end
        seconds = int(math.ceil((last + endpoint_s).max())) + 2
        arrivals = np.bincount(np.floor(starts).astype(np.int64), minlength=seconds)[:seconds].astype(float)
        speaking, finals = speech_per_second(first, last, seconds, endpoint_s)
        closes = starts.astype(float)
        np.maximum.at(closes, owner, last + endpoint_s)
        connected, _ = speech_per_second(starts.astype(float), closes, seconds, 0.0)  # session spans
        return cls(arrivals, connected, speaking, finals)


@dataclass(frozen=True)
class Options:
    slo_s: float = 2.0
    failure_rate_per_h: float = 0.0  # per replica
    spot_share: float = 0.0  # of the replicas, spot (cheaper, pre-empted)
    spot_price: float = 0.3  # relative to on-demand
    preempt_rate_per_h: float = 0.0  # per spot replica
    endpoint_s: float = 0.8
    seed: int = 0
    timeline_every_s: int = 10
    warmup_s: int = 300  # sessions of a trace all start at its first row: the first seconds fill the pools, not counted
    target_sessions: float = 40.0  # per stage-0 replica, every policy: ~0.6 of its 64-session limit
    target_busy: float = 0.6  # per encoder-B / decoder replica, every policy
    hybrid: tuple[tuple[str, float], ...] = ()  # the hybrid's other autoscaler settings (AutoscalerConfig fields)
    zones: tuple[tuple[str, float], ...] = ()  # (zone, share of the sessions); stage 0 spread over them
    cross_zone_s: float = 0.05  # on a FINAL whose session the router placed in another zone
    hang_share: float = 0.0  # of failures, hangs: found by the breaker on heartbeat silence, not at once

    def __post_init__(self) -> None:
        if not 0 < self.target_busy <= 1 or self.target_sessions <= 0 or self.slo_s <= 0:
            raise ConfigError("need 0 < target_busy <= 1, target_sessions > 0 and slo_s > 0")
        if not 0 <= self.hang_share <= 1 or self.cross_zone_s < 0:
            raise ConfigError("need 0 <= hang_share <= 1 and cross_zone_s >= 0")
        if self.zones and (min(v for _, v in self.zones) < 0 or abs(sum(v for _, v in self.zones) - 1) > 1e-6):
            raise ConfigError(f"zone shares must be >= 0 and add up to 1, got {dict(self.zones)}")
        known = {f.name for f in dataclasses.fields(AutoscalerConfig) if f.type in ("float", "int", "bool")}
        unknown = sorted({k for k, _ in self.hybrid} - known)
        if unknown:
            raise ConfigError(f"unknown hybrid autoscaler settings {unknown}; known: {sorted(known)}")


class _Baseline:
    """A baseline policy per stage, on the stage's natural metric at the common targets."""

    def __init__(self, stage: str, kind: str, options: Options):
        per_replica = options.target_sessions if stage == "enc_a" else options.target_busy
        if kind == "hpa":
            self.policy = HPA(target=per_replica)
        elif kind == "kpa":
            self.policy = KPA(target=per_replica / KPA.target_utilization)
        else:
            self.policy = RayServe(target_ongoing_requests=per_replica)
        self.stage = stage

    def decide(self, t: float, ready: int, sessions: float, busy: float, delay: float, arrivals: float) -> int:
        value = sessions if self.stage == "enc_a" else busy
        return self.policy.decide(Observation(t, ready, value))


class _Hybrid:
    """The coordinator's stage pool itself (``controller.StagePool``), fed samples like the controller."""

    def __init__(self, stage: str, cold_start_s: float, options: Options):
        base = PoolConfig().autoscaler_for(stage)
        settings = {k: type(getattr(base, k))(v) for k, v in options.hybrid}  # ints stay ints
        defaults = {
            "cold_start_s": cold_start_s,
            "target_sessions_per_replica": options.target_sessions,
            "target_busy": options.target_busy,
            "max_replicas": 1_000_000,
        }
        config = dataclasses.replace(base, **{**defaults, **settings})
        # the windows decide() reads, with room to spare: an hour of samples made every decision 10x slower
        windows = (config.stable_window_s, config.decline_window_s, config.burst_window_s, config.arrival_window_s)
        self.pool = StagePool("sim", stage, config, history=int(max(windows) + config.arrival_window_s) * 4)

    def decide(self, t: float, ready: int, sessions: float, busy: float, delay: float, arrivals: float) -> int:
        sample = Sample(t=t, sessions=sessions, queue_delay_s=delay, arrivals=arrivals, replicas=ready, busy=busy)
        decision = self.pool.decide(sample, t)
        return decision.replicas + decision.warm_spares


def oracle_replicas(
    service: ServiceModel, stage: str, speaking: np.ndarray, sessions: np.ndarray, budget_s: float
) -> np.ndarray:
    """Per second, the fewest replicas keeping this stage's queueing within ``budget_s`` (and stage-0
    sessions within capacity)."""
    rho = budget_s / (budget_s + service.service_s[stage])
    work = speaking * service.busy_per_speaking[stage]
    replicas = np.maximum(1, np.ceil(work / rho))
    if stage == "dec":  # its work depends on its replica count (batching): a few fixed-point rounds
        for _ in range(4):
            replicas = np.maximum(1, np.ceil(work * service.batch_factor(speaking / replicas) / rho))
    if stage == "enc_a":
        replicas = np.maximum(replicas, np.ceil(sessions / service.max_sessions))
    return replicas.astype(np.int64)


IDLE_STEP_S = 300  # through a stretch with no sessions at all, the simulation steps 5 minutes at a time


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    if cum.size == 0 or cum[-1] <= 0:
        return float("nan")
    return float(values[order][min(np.searchsorted(cum, q * cum[-1]), cum.size - 1)])


def simulate(policy: str, load: Load, profile: Profile, service: ServiceModel, options: Options) -> dict:
    """One policy over the whole load: SLO attainment, latency percentiles, replica-seconds, cost, timeline."""
    rng = np.random.default_rng(options.seed)
    seconds = load.sessions.size
    lengths = profile.final_lengths
    compute = service.final_base_s + service.final_per_audio_s * lengths
    lags = service.endpoint_lags(lengths.size, options.seed)  # the VAD sees the end a little late
    budget = max(0.05, (options.slo_s - service.speculate_s - float(compute.max())) / len(STAGES))
    instant = policy in ("oracle", "static")  # replicas from hindsight, computed here; the others decide
    oracle = {s: oracle_replicas(service, s, load.speaking, load.sessions, budget) for s in STAGES} if instant else {}
    if policy == "static":
        oracle = {s: np.full(seconds, int(v[options.warmup_s :].max(initial=1))) for s, v in oracle.items()}
    if policy in ("hpa", "kpa", "ray"):
        policies = {s: _Baseline(s, policy, options) for s in STAGES}
    elif policy == "hybrid":
        policies = {s: _Hybrid(s, service.cold_start_s[s], options) for s in STAGES}
    else:
        policies = None
    ready = {s: int(oracle[s][0]) if instant else 1 for s in STAGES}
    starting: dict[str, deque[list]] = {s: deque() for s in STAGES}  # [ready at, count], oldest first
    backlog = dict.fromkeys(STAGES, 0.0)
    replica_s = dict.fromkeys(STAGES, 0.0)
    hazard = (options.failure_rate_per_h + options.spot_share * options.preempt_rate_per_h) / 3600
    # a FINAL lost with its replica: found at once (crash) or by the breaker (hang), then replayed elsewhere
    detect_s = options.hang_share * hang_detection_s()
    shares = dict(options.zones)
    router_rng = random.Random(options.seed)
    cross_total = cross_weight = 0.0
    rows: list[np.ndarray] = []  # latency per length quantile, for each counted second with FINALs
    row_weights: list[float] = []
    active = np.cumsum((load.sessions > 1e-9) | (load.finals > 1e-9))  # prefix counts, for idle stretches
    timeline = []
    t = 0
    while t < seconds:
        end = min(seconds, t + IDLE_STEP_S)
        idle = active[end - 1] - (active[t - 1] if t else 0) == 0 and not any(backlog.values())
        dt = end - t if idle else 1
        wait, lost = 0.0, 0.0
        for s in STAGES:
            if instant:  # hindsight: the replicas are there when the load is
                ready[s] = int(oracle[s][t])
            while starting[s] and starting[s][0][0] <= t:
                ready[s] += starting[s].popleft()[1]
            failed = min(ready[s], int(rng.poisson(ready[s] * hazard * dt))) if hazard else 0
            if failed:
                lost = max(lost, failed / ready[s])
                ready[s] -= failed
                if not instant:  # restarted under the same id after a cold start
                    starting[s].append([t + service.cold_start_s[s], failed])
            demand = service.demand(s, load.speaking[t], ready[s])
            backlog[s] = min(max(0.0, backlog[s] + (demand - ready[s]) * dt), service.max_backlog(ready[s]))
            delay = service.wait_s(s, demand, ready[s], backlog[s])
            wait += delay
            if not instant:
                busy = min(demand, float(ready[s]))
                wanted = policies[s].decide(
                    float(t), ready[s], load.sessions[t], busy, min(delay, 3600.0), load.arrivals[t]
                )
                _resize(ready, starting[s], s, wanted, t + service.cold_start_s[s])
            if t >= options.warmup_s:
                replica_s[s] += (ready[s] + sum(n for _, n in starting[s])) * dt
        if not idle and t >= options.warmup_s and load.finals[t] > 1e-9:
            row = (
                lags
                + np.maximum(options.endpoint_s, service.speculate_s + compute + wait)
                + lost * (compute + RECONNECT_S + detect_s)
            )
            cross = cross_zone_share(load.sessions[t], shares, ready["enc_a"], service.max_sessions, router_rng)
            if cross > 0:  # the sessions placed away are any of the second's, whatever their lengths
                row[np.linspace(0, lengths.size - 1, int(round(cross * lengths.size))).astype(np.int64)] += (
                    options.cross_zone_s
                )
            cross_total += cross * float(load.finals[t])
            cross_weight += float(load.finals[t])
            waiting = load.sessions[t] - ready["enc_a"] * service.max_sessions
            if waiting > 1e-9:
                age, due = _waiting(load.arrivals, profile, t, waiting)
                late = min(1.0, due / load.finals[t])
                row[: int(math.ceil(late * lengths.size))] += age + RECONNECT_S
            rows.append(row)
            row_weights.append(float(load.finals[t]))
        if t % options.timeline_every_s == 0 or idle:
            timeline.append(
                {
                    "t": t,
                    "sessions": round(float(load.sessions[t]), 1),
                    "wait_s": round(min(wait, 1e6), 3),
                    **{f"replicas_{s}": ready[s] for s in STAGES},
                }
            )
        t += dt
    flat_l = np.concatenate(rows) if rows else np.zeros(0)
    flat_w = np.repeat(np.asarray(row_weights) / lengths.size, lengths.size)
    finals = float(flat_w.sum())
    met = float(flat_w[flat_l <= options.slo_s].sum())
    price = options.spot_share * options.spot_price + (1 - options.spot_share)
    total_rs = sum(replica_s.values())
    return {
        "slo_attainment": met / finals if finals else 1.0,
        "p50_s": _weighted_quantile(flat_l, flat_w, 0.50),
        "p99_s": _weighted_quantile(flat_l, flat_w, 0.99),
        "replica_seconds": round(total_rs, 1),
        "replica_seconds_by_stage": {s: round(v, 1) for s, v in replica_s.items()},
        "cost": round(total_rs * price / 3600, 3),  # replica-hours at the mix's price
        "finals": round(finals, 1),
        "cross_zone_share": round(cross_total / cross_weight, 4) if cross_weight else 0.0,
        "timeline": timeline,
    }


def _waiting(arrivals: np.ndarray, profile: Profile, t: int, waiting: float) -> tuple[int, float]:
    """The ``waiting`` sessions are the newest: how long the oldest of them has waited (s), and the
    FINALs due from them at ``t`` (their utterances that have ended by their age)."""
    span = min(t + 1, profile.active.size)
    recent = arrivals[t - span + 1 : t + 1][::-1]  # by age 0, 1, ...
    connected = np.cumsum(recent * profile.active[:span])
    age = min(int(np.searchsorted(connected, waiting)) + 1, span)
    return age, float(recent[:age] @ profile.finals[:age])


def _resize(ready: dict, starting: deque, stage: str, wanted: int, ready_at: float) -> None:
    """More replicas start (ready at ``ready_at``); fewer: the newest starting ones go first, then ready ones."""
    total = ready[stage] + sum(n for _, n in starting)
    if wanted > total:
        starting.append([ready_at, wanted - total])
        return
    drop = total - wanted
    while drop and starting:
        take = min(drop, starting[-1][1])
        starting[-1][1] -= take
        drop -= take
        if not starting[-1][1]:
            starting.pop()
    ready[stage] = max(0, ready[stage] - drop)
