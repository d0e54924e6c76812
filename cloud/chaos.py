"""Chaos runs: real-time streams of real speech through ``splitasr up`` while shards die and hang.

A run starts a cluster: tiny.en int8, two replicas of every stage, and a local backend that
restarts a shard that dies. It builds long-form streams from the real clips
(``shared/longform.py``) and plays them in real time through coordinator-routed edge agents,
twice:

- once without faults (the baseline);
- once with faults: a random shard of any stage is SIGKILLed every ``kill_every_s``, one is
  SIGSTOPped for ``hang_s``, and the coordinator is SIGKILLed and started again (it adopts its
  shards from its state file).

The report gives, for both runs, utterances, FINALs, duplicates, lost utterances and the WER.
Shards left running at the end count as orphans. For every utterance in flight when a fault
struck (begun, its FINAL not yet arrived), the report measures the time from the fault to that
FINAL, or from its EOU when the utterance had not ended then: what the fault cost on top of the
endpointing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import random
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splitasr.edge.agent import AgentOptions, EdgeAgent, FinalResult
from splitasr.edge.audio_in import file_source
from splitasr.shared.errors import ConfigError, SplitASRError
from splitasr.shared.longform import LongStream, build_streams
from splitasr.shared.wer import WERTally

log = logging.getLogger(__name__)

CLIP_AND_PAUSE_S = 7.5  # mean clip plus pause of a long-form stream: sizes a stream to the duration


@dataclass(frozen=True)
class ChaosOptions:
    duration_s: float = 60.0  # about how long each run's streams play
    streams: int = 16
    kill_every_s: float = 5.0  # 0: no kills
    hang_s: float = 10.0  # one SIGSTOP this long, a third into the run; 0: none
    coordinator_restart: bool = True  # SIGKILL the coordinator two thirds into the run and start it again
    baseline: bool = True  # a no-fault run of the same streams first
    seed: int = 1

    def __post_init__(self) -> None:
        checks = {
            "duration_s": (10.0, 3600.0),
            "streams": (1, 64),
            "kill_every_s": (0.0, 3600.0),
            "hang_s": (0.0, 600.0),
        }
        for name, (low, high) in checks.items():
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
                raise ConfigError(f"chaos {name} must be within [{low:g}, {high:g}], got {value!r}")
        if 0 < self.kill_every_s < 1.0:
            raise ConfigError("chaos kill_every_s must be 0 (no kills) or at least 1 s")


def cluster_config() -> dict:
    """Two replicas of every stage, so each fault leaves a live one."""
    autoscaler = {"min_replicas": 2, "max_replicas": 4, "warm_spares": 0, "scale_in_stabilization_s": 600}
    pool = {"model": "tiny.en", "languages": ["en"], "enc_b": 2, "dec": 2, "int8": True, "autoscaler": autoscaler}
    return {"decision_period_s": 1.0, "pools": [pool]}


@dataclass
class Fault:
    kind: str  # "kill" | "hang" | "coordinator"
    at_s: float  # since the run started
    stage: str
    pid: int
    at: float = 0.0  # monotonic
    recovered_s: float | None = None  # coordinator: until the new one was ready


class StreamRun:
    """One stream's agent and the arrival time of each of its FINALs."""

    def __init__(self, index: int, stream: LongStream, coordinator: str):
        self.stream = stream
        self.arrivals: list[tuple[float, FinalResult]] = []  # (monotonic arrival, FINAL)
        options = AgentOptions(coordinator=coordinator, device_id=f"chaos-{index}", language="en")
        self.agent = EdgeAgent(options, on_final=self._on_final)
        self.error: str | None = None

    def _on_final(self, result: FinalResult) -> None:
        self.arrivals.append((time.monotonic(), result))

    async def run(self) -> None:
        try:
            await self.agent.run(file_source(self.stream.path, realtime=True))
        except SplitASRError as exc:  # counted as lost utterances in the report
            self.error = f"{type(exc).__name__}: {exc}"

    def recoveries(self, t: float) -> list[float]:
        """For each utterance in flight at ``t`` (begun, FINAL not yet arrived): its FINAL's arrival
        minus ``t``, or minus its EOU when the utterance had not ended at ``t``."""
        out = []
        for arrival, f in self.arrivals:
            first_chunk = arrival - f.received_s
            eou = arrival - f.eou_latency_s
            if first_chunk + f.start_s <= t < arrival:
                out.append(arrival - max(t, eou))
        return out


class Injector:
    """Kills a random live shard every ``kill_every_s`` and hangs one for ``hang_s``."""

    def __init__(self, cluster, options: ChaosOptions, runs: list[StreamRun]):
        self.cluster = cluster
        self.o = options
        self.runs = runs
        self.rng = random.Random(options.seed)
        # faults strike while streams still play: up to the last utterance's end
        self.horizon_s = min(options.duration_s, max(r.stream.utterances[-1].end_s for r in runs))
        self.faults: list[Fault] = []
        self.hung: set[int] = set()

    def _shards(self) -> list[dict]:
        pools = self.cluster.get("/v1/pools")["pools"]
        shards = [s for p in pools for s in p["shards"] if s.get("pid") and s["breaker"] == "closed"]
        return [s for s in shards if s["pid"] not in self.hung and not s.get("draining")]

    async def _strike(self, kind: str, started: float) -> Fault | None:
        shards = await asyncio.to_thread(self._shards)  # the coordinator's view, as admin (pids)
        if not shards:
            return None
        shard = self.rng.choice(shards)
        fault = Fault(kind, round(time.monotonic() - started, 2), shard["stage"], shard["pid"], time.monotonic())
        try:
            os.kill(shard["pid"], signal.SIGKILL if kind == "kill" else signal.SIGSTOP)
        except ProcessLookupError:
            return None
        self.faults.append(fault)
        log.info("chaos: %s %s shard pid %d at %.1f s", kind, fault.stage, fault.pid, fault.at_s)
        return fault

    async def _hang(self, started: float) -> None:
        fault = await self._strike("hang", started)
        if fault is None:
            return
        self.hung.add(fault.pid)
        try:
            await asyncio.sleep(self.o.hang_s)  # the length of the hang
        finally:
            try:
                os.kill(fault.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.hung.discard(fault.pid)

    async def _restart_coordinator(self, started: float) -> None:
        """SIGKILL the coordinator and start a new one on the same state: it adopts the shards."""
        pid = self.cluster.proc.pid
        fault = Fault("coordinator", round(time.monotonic() - started, 2), "coordinator", pid, time.monotonic())
        self.faults.append(fault)
        log.info("chaos: restarting the coordinator (pid %d) at %.1f s", pid, fault.at_s)
        await asyncio.to_thread(self.cluster.restart)
        fault.recovered_s = round(time.monotonic() - fault.at, 2)

    async def run(self, done: asyncio.Event) -> None:
        started = time.monotonic()
        plan: list[tuple[float, str]] = []
        if self.o.kill_every_s:
            plan += [(t, "kill") for t in np.arange(self.o.kill_every_s, self.horizon_s, self.o.kill_every_s)]
        if self.o.hang_s:
            plan.append((self.horizon_s / 3, "hang"))
        if self.o.coordinator_restart:
            plan.append((2 * self.horizon_s / 3, "coordinator"))
        tasks = []
        try:
            for at, kind in sorted(plan):
                delay = started + at - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(done.wait(), delay)  # the fault schedule; stop early when done
                        return
                    except asyncio.TimeoutError:
                        pass
                if kind == "hang":
                    tasks.append(asyncio.create_task(self._hang(started)))
                elif kind == "coordinator":
                    tasks.append(asyncio.create_task(self._restart_coordinator(started)))
                else:
                    await self._strike("kill", started)
        finally:
            await asyncio.gather(*tasks, return_exceptions=True)


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def summarise(runs: list[StreamRun], wall_s: float) -> dict:
    tally, utterances, finals, duplicates, reconnects, eou = WERTally(), 0, 0, 0, 0, []
    for r in runs:
        report = r.agent.report
        spoken = sorted((f for f in report.finals if f.text), key=lambda f: f.utt)
        tally.add(r.stream.reference, " ".join(f.text for f in spoken))
        utterances += report.utterances
        finals += len({f.utt for f in report.finals})
        duplicates += report.duplicate_finals
        reconnects += report.reconnects
        eou += [f.eou_latency_s for f in report.finals]
    return {
        "utterances": utterances,
        "finals": finals,
        "duplicates": duplicates,
        "lost": utterances - finals,
        "failed_streams": [r.error for r in runs if r.error],
        "wer": round(tally.wer, 4),
        "reconnects": reconnects,
        "eou_to_final_s": {"p50": _pct(eou, 50), "p99": _pct(eou, 99), "max": _pct(eou, 100)},
        "texts": [[f.text for f in sorted(r.agent.report.finals, key=lambda f: f.utt) if f.text] for r in runs],
        "wall_s": round(wall_s, 1),
    }


async def _play(streams: list[LongStream], coordinator: str, cluster, options: ChaosOptions | None):
    runs = [StreamRun(i, s, coordinator) for i, s in enumerate(streams)]
    injector = Injector(cluster, options, runs) if options is not None else None
    done = asyncio.Event()
    faults = asyncio.create_task(injector.run(done)) if injector else None
    started = time.monotonic()
    try:
        await asyncio.gather(*(r.run() for r in runs))
    finally:
        done.set()
        if faults is not None:
            await faults
    summary = summarise(runs, time.monotonic() - started)
    if injector is not None:
        summary["fault_horizon_s"] = round(injector.horizon_s, 1)
        summary["faults"] = []
        for f in injector.faults:
            gaps = [g for r in runs for g in r.recoveries(f.at)]
            entry = {k: v for k, v in dataclasses.asdict(f).items() if k != "at"}
            summary["faults"].append(entry | {"in_flight": len(gaps), "worst_s": round(max(gaps), 3) if gaps else None})
        for kind in ("kill", "hang", "coordinator"):
            gaps = [g for f in injector.faults if f.kind == kind for r in runs for g in r.recoveries(f.at)]
            summary[f"{kind}_to_next_final_s"] = {
                "utterances_in_flight": len(gaps),
                "p50": _pct(gaps, 50),
                "p99": _pct(gaps, 99),
                "max": _pct(gaps, 100),
            }
    return summary


def run_chaos(options: ChaosOptions, workdir: Path | None = None) -> dict:
    """Start a cluster, play the streams without and with faults, and return the report."""
    from splitasr.cloud.coordinator.launch import CoordinatorProcess

    workdir = Path(workdir or tempfile.mkdtemp(prefix="splitasr-chaos-"))
    per_stream = max(2, round(options.duration_s / CLIP_AND_PAUSE_S))
    streams = build_streams(workdir / "streams", count=options.streams, per_stream=per_stream, seed=options.seed)
    report: dict = {
        "options": dataclasses.asdict(options),
        "cluster": cluster_config(),
        "streams": [{"file": s.path.name, "utterances": len(s.utterances)} for s in streams],
    }
    cluster = CoordinatorProcess(cluster_config(), workdir / "cluster")
    with cluster:
        if options.baseline:
            report["baseline"] = asyncio.run(_play(streams, cluster.url, cluster, None))
        report["chaos"] = asyncio.run(_play(streams, cluster.url, cluster, options))
        report["restarts"] = sum(1 for line in cluster.log_tail(10**7).splitlines() if "crashed" in line)
    report["orphans"] = cluster.orphans  # shard pids still running once the coordinator had stopped
    return report
