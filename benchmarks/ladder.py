"""The degradation ladder under overload, on fixed replicas, real speech in real time.

English is served by Whisper base (the primary; one replica of each stage, no autoscaling), with
tiny.en as its ``fallback``. In one run:

1. **Capacity**, ladder off: N = 1, 2, 3, ... real-time streams until p99 end of speech -> FINAL
   breaks the SLO; capacity C is the largest N within it.
2. **Overload at ``--overload`` x C streams**, ladder off (the baseline) and then ladder on: p99
   per system, the ladder's levels over time (sampled from /v1/pools), which model answered each
   FINAL. After the load a single stream plays on while the ladder climbs back to normal.
3. **The WER cost of each level**, at light load on the ladder-off cluster (so that the ladder
   cannot move the sessions itself): the same streams with partials every 0.4 s (normal), every
   1.2 s (level 1), partials off (level 2; the levels' flags set by hand), and on the fallback
   model (level 3: ``model=tiny.en``). ``--wer-only`` runs just this part (``NAME-wer.json``).

Latency runs from an utterance's true end (its last voiced sample) to its FINAL. Streams: the
long-form real-speech recordings of ``shared/longform.py``, edge frames recorded once and replayed
at their stream times. Writes benchmarks/results/ladder.json + ladder.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capacity import Answer  # noqa: E402
from common import FIXED, machine, print_table, recorded_streams, save_figure, write_json  # noqa: E402
from streaming import pct, true_end_latencies  # noqa: E402

from splitasr.cli.admin import call  # noqa: E402
from splitasr.cloud.coordinator.launch import CoordinatorProcess  # noqa: E402
from splitasr.edge.agent import AgentOptions, EdgeAgent, replay_frames  # noqa: E402
from splitasr.shared.errors import SessionRejectedError  # noqa: E402
from splitasr.shared.wer import WERTally  # noqa: E402

ADMIN = "ladder-bench"


def config(ladder: bool, slo_ms: float) -> dict:
    primary = {
        "model": "base",
        "languages": ["en"],
        "zones": ["a"],
        "autoscaler": FIXED,
        "enc_b_autoscaler": {"max_replicas": 1},
        "dec_autoscaler": {"max_replicas": 1},
        "fallback": "tiny.en",
        "ladder": {
            "enabled": ladder,
            "slo_p99_ms": slo_ms,
            "max_level": 3,  # every stream here is interactive: levels 4-5 touch batch work only
            "down_after_s": 2,
            "up_after_s": 15,
            "min_step_s": 2,
        },
    }
    fallback = {**primary, "model": "tiny.en", "fallback": None, "ladder": {"enabled": False}}
    return {"decision_period_s": 0.5, "pools": [primary, fallback]}


class LevelSampler:
    """The primary pool's ladder level every 0.5 s (a thread: the load runs on its own loop)."""

    def __init__(self, cluster: CoordinatorProcess):
        self.cluster, self.samples, self._stop = cluster, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            pool = next(p for p in self.cluster.get("/v1/pools")["pools"] if p["model"] == "base")
            self.samples.append((round(time.monotonic() - self.t0, 1), pool["ladder"]["level"]))
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


async def one_stream(url: str, frames, device: str, model: str | None) -> list[tuple[Answer, str]] | None:
    """The session's FINALs (answer, model), or None when no shard took it (every one refused)."""
    options = AgentOptions(coordinator=url, device_id=device, language="en", model=model, final_timeout_s=180)
    try:
        report = await EdgeAgent(options).run_frames(replay_frames(frames))
    except SessionRejectedError:
        return None
    return [(Answer(f.text, f.start_s, f.end_s, f.received_s), f.model_version.split("@")[0]) for f in report.finals]


def run(url: str, streams, recorded, n: int, model: str | None = None, duration_s: float = 0.0) -> dict:
    """``n`` concurrent real-time sessions: each of ``n`` slots plays long-form streams one after
    another (slot i: streams i, i + n, ... mod count), a new session each, until ``duration_s`` has
    passed (0: one session per slot). New sessions keep arriving, as on a live service."""
    played: list[tuple[int, list]] = []

    async def slot(i: int) -> None:
        await asyncio.sleep(0.25 * i / n)  # staggered arrivals
        j = 0
        while j == 0 or time.monotonic() - started < duration_s:
            k = (i + j * n) % len(streams)
            played.append((k, await one_stream(url, recorded[k], f"lad-{i}-{j}", model)))
            j += 1

    async def all_slots():
        await asyncio.gather(*(slot(i) for i in range(n)))

    started = time.monotonic()
    asyncio.run(all_slots())
    refused = sum(finals is None for _, finals in played)
    played = [(k, finals) for k, finals in played if finals is not None]
    tally, latencies, by_model = WERTally(), [], {}
    for k, finals in played:
        s = streams[k]
        answers = sorted((a for a, _ in finals if a.text), key=lambda a: a.start_s)
        tally.add(s.reference, " ".join(a.text for a in answers))
        latencies += true_end_latencies(s, answers)
        for a, m in finals:
            by_model[m] = by_model.get(m, 0) + (1 if a.text else 0)
    return {
        "streams": n,
        "sessions": len(played),
        "refused_sessions": refused,  # no shard took them (all at capacity) after the agent's retries
        "wer": round(tally.wer, 4),
        "words": tally.words,
        "p50_s": round(pct(latencies, 50), 3),
        "p95_s": round(pct(latencies, 95), 3),
        "p99_s": round(pct(latencies, 99), 3),
        "finals_by_model": by_model,
        "wall_s": round(time.monotonic() - started, 1),
    }


def set_flags(cluster: CoordinatorProcess, **values) -> None:
    """The base pool's flags: exactly ``values`` (none: cleared), applied by every shard."""
    call(cluster.url, "/v1/flags", {"pool": "base", "clear": True}, ADMIN)
    if values:
        call(cluster.url, "/v1/flags", {"pool": "base", "share": 1.0, "set": values}, ADMIN)
    version = cluster.get("/v1/flags")["version"]
    deadline = time.monotonic() + 20
    while any(s["flags_version"] != version for s in cluster.get("/v1/pools")["pools"][0]["shards"]):
        if time.monotonic() > deadline:
            raise RuntimeError("shards did not apply the flags")
        time.sleep(0.2)  # polling the coordinator for the shards' acknowledgement


def wer_costs(cluster: CoordinatorProcess, streams, recorded, n: int) -> dict:
    """The same ``n`` streams at each ladder level's settings, on a cluster whose ladder is off."""
    costs = {}
    for level, flags, model in (
        ("0 normal", {}, None),
        ("1 partials every 1.2 s", {"partial_interval_s": 1.2}, None),
        ("2 partials off", {"partials": False}, None),
        ("3 fallback model", {}, "tiny.en"),
    ):
        set_flags(cluster, **flags)
        costs[level] = run(cluster.url, streams, recorded, n, model=model)
        print(f"WER pass {level}: {costs[level]}", flush=True)
    set_flags(cluster)
    return costs


def print_costs(costs: dict) -> None:
    print_table(
        ["ladder level (light load)", "WER", "words", "p99 s", "FINALs by model"],
        [[k, r["wer"], r["words"], r["p99_s"], r["finals_by_model"]] for k, r in costs.items()],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slo-s", type=float, default=2.5, help="p99 end of speech -> FINAL")
    parser.add_argument("--ramp", default="1,2,3,4,5,6")
    parser.add_argument("--overload", type=float, default=3.0, help="overload = this x capacity")
    parser.add_argument("--overload-s", type=float, default=120.0, help="how long the overload lasts")
    parser.add_argument("--count", type=int, default=6, help="distinct long-form streams")
    parser.add_argument("--per-stream", type=int, default=3, help="real clips per long-form stream")
    parser.add_argument("--wer-streams", type=int, default=3, help="streams per light-load WER pass")
    parser.add_argument("--name", default="ladder")
    parser.add_argument("--wer-only", action="store_true", help="only the WER cost of each level")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="splitasr-ladder-"))
    streams, recorded = recorded_streams(workdir, args.count, args.per_stream)
    # the shards' own p99 (EOU -> FINAL) leaves out the endpoint silence the SLO includes
    shard_slo_ms = 1000 * max(0.5, args.slo_s - 0.8 - 0.3)
    out: dict = {"slo_p99_s": args.slo_s, "ladder_slo_p99_ms": shard_slo_ms}

    if args.wer_only:
        with CoordinatorProcess(config(False, shard_slo_ms), workdir / "off", admin_token=ADMIN) as cluster:
            costs = wer_costs(cluster, streams, recorded, args.wer_streams)
        print_costs(costs)
        print(f"wrote {write_json(args.name + '-wer', {'machine': machine(), 'wer_by_level': costs})}")
        return 0

    with CoordinatorProcess(config(False, shard_slo_ms), workdir / "off", admin_token=ADMIN) as cluster:
        ramp = []
        for n in (int(x) for x in args.ramp.split(",")):
            ramp.append(run(cluster.url, streams, recorded, n))
            print(f"capacity N={n}: {ramp[-1]}", flush=True)
            if ramp[-1]["p99_s"] > args.slo_s:
                break
        capacity = max([r["streams"] for r in ramp if r["p99_s"] <= args.slo_s], default=1)
        heavy = max(2, round(args.overload * capacity))
        baseline = run(cluster.url, streams, recorded, heavy, duration_s=args.overload_s)
        print(f"overload N={heavy}, ladder off: {baseline}", flush=True)
        costs = wer_costs(cluster, streams, recorded, args.wer_streams)
    out |= {"capacity": capacity, "ramp": ramp, "overload_streams": heavy, "ladder_off": baseline}

    with CoordinatorProcess(config(True, shard_slo_ms), workdir / "on", admin_token=ADMIN) as cluster:
        with LevelSampler(cluster) as levels:
            loaded = run(cluster.url, streams, recorded, heavy, duration_s=args.overload_s)
            load_end = time.monotonic() - levels.t0
            print(f"overload N={heavy}, ladder on: {loaded}", flush=True)
            after = run(cluster.url, streams, recorded, 1)  # light load while the ladder climbs back
            deadline = time.monotonic() + 120
            while levels.samples[-1][1] != 0 and time.monotonic() < deadline:
                time.sleep(0.5)  # the sampler thread records the climb
        back = next((t for t, lvl in levels.samples if t > load_end and lvl == 0), None)
        changes = [e for e in cluster.get("/v1/pools")["changes"] if e["event"] == "ladder"]
        out |= {
            "ladder_on": loaded,
            "after_load": after,
            "levels": levels.samples,
            "max_level": max(lvl for _, lvl in levels.samples),
            "normal_again_s_after_load": round(back - load_end, 1) if back is not None else None,
            "ladder_changes": [e["detail"] for e in changes],
        }
        print(f"ladder: max level {out['max_level']}, normal again {out['normal_again_s_after_load']} s after the load")
    out["wer_by_level"] = costs

    print(f"\nSLO p99 end of speech -> FINAL <= {args.slo_s} s; base primary, tiny.en fallback; {os.cpu_count()} cores")
    knee = next(r for r in ramp if r["streams"] == capacity)
    columns = ("sessions", "refused_sessions", "p50_s", "p99_s", "wer", "finals_by_model")
    print_table(
        ["run", "streams", "sessions", "refused", "p50 s", "p99 s", "WER", "FINALs by model"],
        [
            [f"capacity (ladder off), N={capacity}", capacity] + [knee[k] for k in columns],
            *[
                [name, r["streams"]] + [r[k] for k in columns]
                for name, r in (("overload, ladder off", baseline), ("overload, ladder on", loaded))
            ],
        ],
    )
    print_costs(costs)
    path = write_json(args.name, {"machine": machine(), **out})
    png = plot(args.name, out)
    print(f"wrote {path} and {png}")
    return 0


def plot(name: str, out: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(1, 2, figsize=(11, 4))
    t, lvl = zip(*out["levels"], strict=True)
    top.step(t, lvl, where="post")
    top.set_xlabel("seconds")
    top.set_ylabel("ladder level")
    top.set_title(f"base pool at {out['overload_streams']} streams, then 1")
    runs = {"capacity": next(r for r in out["ramp"] if r["streams"] == out["capacity"])}
    runs |= {"overload, off": out["ladder_off"], "overload, on": out["ladder_on"]}
    bottom.bar(list(runs), [r["p99_s"] for r in runs.values()], color=["#4c72b0", "#dd8452", "#55a868"])
    bottom.axhline(out["slo_p99_s"], color="red", linestyle="--", label="SLO")
    bottom.set_ylabel("p99 end of speech -> FINAL (s)")
    bottom.legend()
    return save_figure(fig, name)


if __name__ == "__main__":
    sys.exit(main())
