"""Chaos runs: real-time streams of real speech through ``splitasr up`` while shards die and hang.

A run starts a cluster: tiny.en int8, two replicas of every stage, and a local backend that
restarts a shard that dies. It builds long-form streams from the real clips
(``shared/longform.py``) and plays them in real time through coordinator-routed edge agents,
twice:

- once without faults (the baseline);
- once with faults: a random shard of any stage is SIGKILLed every ``kill_every_s``, one is
  SIGSTOPped for ``hang_s``, and the coordinator is SIGKILLed and started again (it adopts its
  shards from its state file).

A third run puts the network at fault (``network_every_s``): a static chain of the same shape
with a fault-injecting TCP proxy (``cloud/faultproxy.py``) in front of every shard, so between the
edges and stage 0 and between stages; every ``network_every_s`` one proxy resets its connections,
stalls for ``NET_STALL_S`` (a partition: nothing moves, the peers' deadlines must notice) or delays
every chunk by ``NET_DELAY_S`` for ``NET_DELAY_FOR_S``.

The edges run on devices, not on the cluster's machine: by default each stream's edge pipeline
(conditioning, Silero VAD, endpointing, log-mel, int8 frames) runs once before the runs, and each
run's edge agents replay those frames in real time (``live_edges`` runs the pipeline in every
agent instead, on the cluster's cores). The agents' sessions, routing, failover and replay of
unanswered utterances are the same either way; recorded frames keep the edge's own endpointing,
while live agents follow a pool's ``endpoint_silence_s`` flag (the chaos cluster sets none).

The report gives, for both runs, utterances, FINALs, duplicates, lost utterances and the WER.
Shards left running at the end count as orphans. For every utterance in flight when a fault
struck (begun, its FINAL not yet arrived), the report measures the time from the fault to that
FINAL, or from its EOU when the utterance had not ended then (what the fault cost on top of the
endpointing), and what the fault added: that utterance's EOU → FINAL minus the same utterance's in
the no-fault run (for the network run too, whose static proxied chain is not the baseline's
coordinator-routed cluster).
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from splitasr.cloud.faultproxy import FaultProxy
from splitasr.cloud.local_cluster import ChainSpec, LocalCluster, ShardProcess
from splitasr.edge.agent import AgentOptions, EdgeAgent, EdgeFrame, FinalResult, record_frames, replay_frames
from splitasr.edge.audio_in import file_source
from splitasr.shared.errors import ConfigError, SplitASRError
from splitasr.shared.longform import LongStream, build_streams
from splitasr.shared.wer import WERTally

log = logging.getLogger(__name__)

CLIP_AND_PAUSE_S = 7.5  # mean clip plus pause of a long-form stream: sizes a stream to the duration
NET_STALL_S = 3.0  # a network partition of one link: longer than hang detection (1.5 x HEARTBEAT_S)
NET_DELAY_S = 0.2  # added to every chunk on one link ...
NET_DELAY_FOR_S = 5.0  # ... for this long
SAME_START_S = 0.05  # an utterance of the no-fault run is the same one if it starts within this


@dataclass(frozen=True)
class ChaosOptions:
    duration_s: float = 60.0  # about how long each run's streams play
    streams: int = 16
    kill_every_s: float = 5.0  # 0: no kills
    hang_s: float = 10.0  # one SIGSTOP this long, a third into the run; 0: none
    coordinator_restart: bool = True  # SIGKILL the coordinator two thirds into the run and start it again
    network_every_s: float = 4.0  # a network run: a proxy resets, stalls or delays this often; 0: no run
    baseline: bool = True  # a no-fault run of the same streams first
    live_edges: bool = False  # run every edge's VAD and log-mel here, not once before the runs
    seed: int = 1

    def __post_init__(self) -> None:
        checks = {
            "duration_s": (10.0, 3600.0),
            "streams": (1, 64),
            "kill_every_s": (0.0, 3600.0),
            "hang_s": (0.0, 600.0),
            "network_every_s": (0.0, 3600.0),
        }
        for name, (low, high) in checks.items():
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
                raise ConfigError(f"chaos {name} must be within [{low:g}, {high:g}], got {value!r}")
        for name in ("kill_every_s", "network_every_s"):
            if 0 < getattr(self, name) < 1.0:
                raise ConfigError(f"chaos {name} must be 0 (none) or at least 1 s")


def cluster_config() -> dict:
    """Two replicas of every stage, so each fault leaves a live one; the later stages stay at two
    (the runs compare with the static network chain and with earlier reports)."""
    autoscaler = {"min_replicas": 2, "max_replicas": 4, "warm_spares": 0, "scale_in_stabilization_s": 600}
    fixed = {"max_replicas": 2}
    pool = {
        "model": "tiny.en",
        "languages": ["en"],
        "enc_b": 2,
        "dec": 2,
        "int8": True,
        "autoscaler": autoscaler,
        "enc_b_autoscaler": fixed,
        "dec_autoscaler": fixed,
    }
    return {"decision_period_s": 1.0, "pools": [pool]}


def network_chain() -> ChainSpec:
    """The network run's static chain: the chaos cluster's shape (two replicas of every stage)."""
    return ChainSpec("tiny.en", enc_a=2, enc_b=2, dec=2, int8=True)


@dataclass
class Fault:
    kind: str  # "kill" | "hang" | "coordinator" | "reset" | "stall" | "delay"
    at_s: float  # since the run started
    stage: str
    pid: int
    at: float = 0.0  # monotonic
    recovered_s: float | None = None  # coordinator: until the new one was ready


def edge_options(index: int, where: dict | None = None) -> AgentOptions:
    """Stream ``index``'s edge; ``where``: ``{"coordinator": url}`` or ``{"shards": [stage-0 urls]}``."""
    return AgentOptions(device_id=f"chaos-{index}", language="en", **(where or {}))


def record_edges(streams: list[LongStream]) -> list[list[EdgeFrame]]:
    """Each stream's edge frames, made once (as the devices would) for the runs to replay."""

    async def record(i: int, stream: LongStream) -> list[EdgeFrame]:
        return await record_frames(file_source(stream.path, realtime=False), edge_options(i))

    return [asyncio.run(record(i, s)) for i, s in enumerate(streams)]


class StreamRun:
    """One stream's agent and the arrival time of each of its FINALs."""

    def __init__(self, index: int, stream: LongStream, where: dict, frames: list[EdgeFrame] | None = None):
        """``frames``: the stream's recorded edge frames to replay; None runs the edge pipeline live."""
        self.stream = stream
        self.frames = frames
        self.arrivals: list[tuple[float, FinalResult]] = []  # (monotonic arrival, FINAL)
        self.agent = EdgeAgent(edge_options(index, where), on_final=self._on_final)
        self.error: str | None = None

    def _on_final(self, result: FinalResult) -> None:
        self.arrivals.append((time.monotonic(), result))

    async def run(self) -> None:
        try:
            if self.frames is None:
                await self.agent.run(file_source(self.stream.path, realtime=True))
            else:
                await self.agent.run_frames(replay_frames(self.frames))
        except SplitASRError as exc:  # counted as lost utterances in the report
            self.error = f"{type(exc).__name__}: {exc}"

    def recoveries(self, t: float) -> list[tuple[int, float]]:
        """For each utterance in flight at ``t`` (begun, FINAL not yet arrived): (its index, its
        FINAL's arrival minus ``t``, or minus its EOU when the utterance had not ended at ``t``)."""
        out = []
        for arrival, f in self.arrivals:
            first_chunk = arrival - f.received_s
            eou = arrival - f.eou_latency_s
            if first_chunk + f.start_s <= t < arrival:
                out.append((f.utt, arrival - max(t, eou)))
        return out

    def latencies(self) -> dict[int, tuple[float, float]]:
        """(EOU -> FINAL, start in stream time) of each utterance with a FINAL, by utterance index."""
        return {f.utt: (f.eou_latency_s, f.start_s) for f in self.agent.report.finals}


def strike_targets(pools: list[dict], hung: set[int]) -> list[dict]:
    """Shards a fault may strike (from ``/v1/pools`` as admin): live ones (breaker closed, not hung,
    not draining) of a stage that has another live replica. Like a disruption budget of one, a
    fault never takes a stage's last replica, so what is measured is failover to the survivor."""
    live = [
        (p["model"], s)
        for p in pools
        for s in p["shards"]
        if s.get("pid") and s["breaker"] == "closed" and s["pid"] not in hung and not s.get("draining")
    ]
    replicas = Counter((model, s["stage"]) for model, s in live)
    return [s for model, s in live if replicas[model, s["stage"]] >= 2]


def fault_horizon(options: ChaosOptions, runs: list[StreamRun]) -> float:
    """Faults strike while streams still play: up to the last utterance's end."""
    return min(options.duration_s, max(r.stream.utterances[-1].end_s for r in runs))


def between_kills(at_s: float, kill_every_s: float) -> float:
    """The midpoint between the two kills around ``at_s`` (``at_s`` itself with no kills): a hang or
    restart that struck with a kill would share its cost."""
    if not kill_every_s:
        return at_s
    return (math.floor(at_s / kill_every_s) + 0.5) * kill_every_s


async def _at(started: float, at_s: float, done: asyncio.Event) -> bool:
    """Wait until ``at_s`` after ``started``; False when ``done`` was set first (the streams ended)."""
    delay = started + at_s - time.monotonic()
    if delay <= 0:
        return not done.is_set()
    try:
        await asyncio.wait_for(done.wait(), delay)  # the fault schedule; stop early when done
        return False
    except asyncio.TimeoutError:
        return True


class Injector:
    """Kills a random live shard every ``kill_every_s`` and hangs one for ``hang_s``."""

    KINDS = ("kill", "hang", "coordinator")

    def __init__(self, cluster, options: ChaosOptions, runs: list[StreamRun]):
        self.cluster = cluster
        self.o = options
        self.rng = random.Random(options.seed)
        self.horizon_s = fault_horizon(options, runs)
        self.faults: list[Fault] = []
        self.skipped: list[dict] = []  # faults not struck: no stage had a second live replica
        self.hung: set[int] = set()
        self._coordinator = asyncio.Lock()  # held while the coordinator restarts: a strike asks it for targets

    def _shards(self) -> list[dict]:
        return strike_targets(self.cluster.get("/v1/pools")["pools"], self.hung)

    async def _strike(self, kind: str, started: float) -> Fault | None:
        async with self._coordinator:  # a kill due while the coordinator restarts waits for the new one
            shards = await asyncio.to_thread(self._shards)  # the coordinator's view, as admin (pids)
        if not shards:  # every stage is down to its last live replica: wait for the next turn
            self.skipped.append({"kind": kind, "at_s": round(time.monotonic() - started, 2)})
            log.info("chaos: no stage has two live replicas; %s skipped", kind)
            return None
        shard = self.rng.choice(shards)
        fault = Fault(kind, round(time.monotonic() - started, 2), shard["stage"], shard["pid"], time.monotonic())
        try:
            os.kill(shard["pid"], signal.SIGKILL if kind == "kill" else signal.SIGSTOP)
        except ProcessLookupError:  # it died since the coordinator's last view: counted, not struck
            self.skipped.append({"kind": kind, "at_s": fault.at_s, "reason": "the shard had exited"})
            return None
        self.faults.append(fault)
        log.info("chaos: %s %s shard pid %d at %.1f s", kind, fault.stage, fault.pid, fault.at_s)
        return fault

    async def _hang(self, started: float) -> asyncio.Task | None:
        """SIGSTOP a shard now (before a kill due at the same moment picks its targets, so the two
        never strike the same shard); the returned task sends SIGCONT after ``hang_s``."""
        fault = await self._strike("hang", started)
        if fault is None:
            return None
        self.hung.add(fault.pid)
        return asyncio.create_task(self._release(fault))

    async def _release(self, fault: Fault) -> None:
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
        async with self._coordinator:
            await asyncio.to_thread(self.cluster.restart)
        fault.recovered_s = round(time.monotonic() - fault.at, 2)

    async def run(self, done: asyncio.Event) -> None:
        started = time.monotonic()
        plan: list[tuple[float, str]] = []
        if self.o.kill_every_s:
            plan += [(t, "kill") for t in np.arange(self.o.kill_every_s, self.horizon_s, self.o.kill_every_s)]
        if self.o.hang_s:
            plan.append((between_kills(self.horizon_s / 3, self.o.kill_every_s), "hang"))
        if self.o.coordinator_restart:
            plan.append((between_kills(2 * self.horizon_s / 3, self.o.kill_every_s), "coordinator"))
        tasks = []
        try:
            for at, kind in sorted(plan):
                if not await _at(started, at, done):
                    return
                if kind == "hang":
                    if (release := await self._hang(started)) is not None:
                        tasks.append(release)
                elif kind == "coordinator":
                    tasks.append(asyncio.create_task(self._restart_coordinator(started)))
                else:
                    await self._strike("kill", started)
        finally:
            await asyncio.gather(*tasks, return_exceptions=True)


class NetworkInjector:
    """Every ``network_every_s``, one random proxy (in front of a random shard) resets, stalls or
    delays (in turn)."""

    KINDS = ("reset", "stall", "delay")

    def __init__(self, proxies: list[tuple[ShardProcess, FaultProxy]], options: ChaosOptions, runs: list[StreamRun]):
        self.proxies = proxies
        self.o = options
        self.rng = random.Random(options.seed)
        self.horizon_s = fault_horizon(options, runs)
        self.faults: list[Fault] = []
        self.skipped: list[dict] = []  # every link has a proxy: none is skipped

    async def run(self, done: asyncio.Event) -> None:
        started = time.monotonic()
        for i, at in enumerate(np.arange(self.o.network_every_s, self.horizon_s, self.o.network_every_s)):
            if not await _at(started, float(at), done):
                return
            kind = self.KINDS[i % len(self.KINDS)]  # in turn: a short run sees each kind
            shard, proxy = self.rng.choice(self.proxies)
            now = time.monotonic()
            self.faults.append(Fault(kind, round(now - started, 2), shard.role, shard.pid, now))
            log.info("chaos: %s on the link to %s shard pid %d", kind, shard.role, shard.pid)
            if kind == "reset":
                proxy.reset()
            elif kind == "stall":
                proxy.stall(NET_STALL_S)
            else:
                proxy.delay(NET_DELAY_S, NET_DELAY_FOR_S)


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
        "eou_to_final_s": _spread(eou),
        "texts": [[f.text for f in sorted(r.agent.report.finals, key=lambda f: f.utt) if f.text] for r in runs],
        # per stream, utterance -> [EOU -> FINAL, start in stream time]: what a fault's cost is compared with
        "eou_latency_s": [{str(u): [round(x, 3) for x in v] for u, v in sorted(r.latencies().items())} for r in runs],
        "wall_s": round(wall_s, 1),
    }


def charge(runs: list[StreamRun], faults: list[Fault]) -> dict[tuple[int, int], tuple[Fault, float]]:
    """Each utterance in flight at a fault, by (stream, utterance): the last fault that struck while
    it was in flight, and the time from that fault (or the EOU, if later) to its FINAL. An utterance in
    flight through several faults (a long one) is counted once."""
    charged = {}
    for f in sorted(faults, key=lambda f: f.at):
        for i, r in enumerate(runs):
            for utt, gap in r.recoveries(f.at):
                charged[i, utt] = (f, gap)
    return charged


def costs(
    charged: dict[tuple[int, int], tuple[Fault, float]],
    runs: list[StreamRun],
    baseline: dict | None,
    which: Callable[[Fault], bool],
) -> tuple[list[float], list[float]]:
    """For the charged utterances whose fault passes ``which``: fault (or EOU) -> FINAL, and what the
    fault added (EOU -> FINAL minus the same utterance's in ``baseline``, the no-fault run's summary;
    the same utterance: the same index and start, which live edges need not cut alike)."""
    gaps, added = [], []
    ours = [r.latencies() for r in runs]
    for (i, utt), (f, gap) in charged.items():
        if not which(f):
            continue
        gaps.append(gap)
        before = baseline["eou_latency_s"][i].get(str(utt)) if baseline else None
        latency, start_s = ours[i][utt]
        if before is not None and abs(before[1] - start_s) < SAME_START_S:
            added.append(latency - before[0])
    return gaps, added


def _spread(values: list[float]) -> dict:
    return {"p50": _pct(values, 50), "p99": _pct(values, 99), "max": _pct(values, 100)}


async def _play(
    streams: list[LongStream],
    frames: list[list[EdgeFrame]] | None,
    where: dict,
    make_injector=None,
    baseline: dict | None = None,
) -> dict:
    """Play ``streams`` in real time through edges pointed at ``where`` (replaying ``frames`` when
    given); ``make_injector(runs)`` gives the faults (None: a no-fault run); ``baseline``: the
    no-fault run's summary, to which each fault's cost is compared."""
    runs = [StreamRun(i, s, where, frames[i] if frames else None) for i, s in enumerate(streams)]
    injector = make_injector(runs) if make_injector is not None else None
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
        summary["skipped_faults"] = injector.skipped
        summary["faults"] = []
        charged = charge(runs, injector.faults)
        for f in injector.faults:
            gaps, added = costs(charged, runs, baseline, lambda g, f=f: g is f)
            entry = {k: v for k, v in dataclasses.asdict(f).items() if k != "at"}
            summary["faults"].append(
                entry
                | {
                    "in_flight": sum(len(r.recoveries(f.at)) for r in runs),
                    "charged": len(gaps),
                    "worst_s": round(max(gaps), 3) if gaps else None,
                    "worst_added_s": round(max(added), 3) if added else None,
                }
            )
        for kind in injector.KINDS:
            gaps, added = costs(charged, runs, baseline, lambda g, kind=kind: g.kind == kind)
            summary[f"{kind}_to_next_final_s"] = {"charged": len(gaps)} | _spread(gaps)
            if baseline is not None:
                summary[f"{kind}_added_s"] = _spread(added)
    return summary


def _network_run(
    streams: list[LongStream], frames, options: ChaosOptions, workdir: Path, baseline: dict | None
) -> dict:
    """The same streams through a static chain with a fault-injecting proxy in front of every shard."""
    proxies: list[tuple[ShardProcess, FaultProxy]] = []

    def behind_proxy(shard: ShardProcess) -> str:
        url = urlsplit(shard.url)
        proxy = FaultProxy(url.hostname, url.port, name=f"{shard.role}-{shard.pid}").start()
        proxies.append((shard, proxy))
        return proxy.url()

    try:
        with LocalCluster([network_chain()], workdir, reach=behind_proxy) as cluster:
            where = {"shards": cluster.stage0_urls("tiny.en")}
            return asyncio.run(_play(streams, frames, where, partial(NetworkInjector, proxies, options), baseline))
    finally:
        for _, proxy in proxies:
            proxy.close()


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
    frames = None if options.live_edges else record_edges(streams)
    cluster = CoordinatorProcess(cluster_config(), workdir / "cluster")
    with cluster:
        where = {"coordinator": cluster.url}
        baseline = asyncio.run(_play(streams, frames, where)) if options.baseline else None
        if baseline is not None:
            report["baseline"] = baseline
        report["chaos"] = asyncio.run(_play(streams, frames, where, partial(Injector, cluster, options), baseline))
        report["restarts"] = sum(1 for line in cluster.log_tail(10**7).splitlines() if "crashed" in line)
    report["orphans"] = cluster.orphans  # shard pids still running once the coordinator had stopped
    if options.network_every_s:
        report["network"] = _network_run(streams, frames, options, workdir / "network", baseline)
    return report
