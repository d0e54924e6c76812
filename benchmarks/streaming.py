"""N concurrent real-time edge streams against a local cluster: end-of-speech to FINAL latency, partials.

Prints p50/p95/p99 of the time from end of speech to FINAL and the partial cadence per N and writes
benchmarks/results/streaming.json + streaming.png. All runs share one cluster in one process tree.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, print_table, write_json  # noqa: E402

from splitasr.cloud.local_cluster import ChainSpec, LocalCluster  # noqa: E402
from splitasr.edge.agent import AgentOptions, EdgeAgent  # noqa: E402
from splitasr.edge.audio_in import file_source  # noqa: E402
from splitasr.shared.wer import WERTally, read_manifest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


async def run_streams(urls: list[str], clips, n: int):
    partial_times: dict[tuple[int, int], list[float]] = {}

    async def one(i: int):
        entry = clips[i % len(clips)]

        def on_partial(frame, key=i):
            partial_times.setdefault((key, frame.utt), []).append(time.monotonic())

        # spread the streams over the stage-0 replicas, as a router would
        order = tuple(urls[i % len(urls) :] + urls[: i % len(urls)])
        agent = EdgeAgent(AgentOptions(shards=order, device_id=f"bench-{i}", language="en"), on_partial=on_partial)
        await asyncio.sleep(0.25 * i / max(n, 1))  # stagger starts within 250 ms, like real arrivals
        return entry, await agent.run(file_source(entry.file, realtime=True))

    results = await asyncio.gather(*(one(i) for i in range(n)))
    gaps = [b - a for times in partial_times.values() for a, b in zip(times, times[1:], strict=False)]
    return results, gaps


def pct(xs, q):
    return float(np.percentile(xs, q)) if xs else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", default="1,4,8,16")
    parser.add_argument("--stage0-replicas", type=int, default=2)
    args = parser.parse_args()
    clips = [
        e
        for e in read_manifest(ROOT / "samples" / "manifest.jsonl")
        if e.language == "en" and e.file.name != "en_story.flac"
    ]
    rows, out = [], {}
    with LocalCluster([ChainSpec("tiny.en", enc_a=args.stage0_replicas)]) as cluster:
        urls = cluster.stage0_urls("tiny.en")
        for n in (int(x) for x in args.streams.split(",")):
            started = time.monotonic()
            results, gaps = asyncio.run(run_streams(urls, clips, n))
            wall = time.monotonic() - started
            lat = [f.latency_s * 1000 for _, r in results for f in r.finals]
            tally = WERTally()
            for entry, report in results:
                tally.add(entry.text, " ".join(f.text for f in sorted(report.finals, key=lambda f: f.utt)))
            out[n] = {
                "finals": len(lat),
                "final_ms_p50": pct(lat, 50),
                "final_ms_p95": pct(lat, 95),
                "final_ms_p99": pct(lat, 99),
                "partial_gap_s_p50": pct(gaps, 50),
                "partial_gap_s_p95": pct(gaps, 95),
                "partials": len(gaps) + len(results),
                "wer": tally.wer,
                "wall_s": wall,
                "final_ms": lat,
            }
            r = out[n]
            rows.append(
                [
                    n,
                    r["finals"],
                    round(r["final_ms_p50"]),
                    round(r["final_ms_p95"]),
                    round(r["final_ms_p99"]),
                    round(r["partial_gap_s_p50"], 2),
                    f"{tally.wer * 100:.1f}%",
                ]
            )
            print(f"N={n}: done in {wall:.1f} s", flush=True)
    print(
        "\nend of speech -> FINAL (ms) and partial cadence (s), tiny.en, "
        f"{args.stage0_replicas} stage-0 replicas + enc_b + dec, 1 thread each, 2 cores"
    )
    print_table(["streams", "finals", "p50 ms", "p95 ms", "p99 ms", "partial gap p50 s", "WER"], rows)
    path = write_json(
        "streaming",
        {
            "model": "tiny.en",
            "stage0_replicas": args.stage0_replicas,
            "note": "latency includes the 0.5 s tail of each clip or the 0.8 s endpoint",
            "results": out,
        },
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = list(out)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("final_ms_p50", "p50"), ("final_ms_p95", "p95"), ("final_ms_p99", "p99")):
        ax.plot(ns, [out[n][key] for n in ns], marker="o", label=label)
    ax.set_xlabel("concurrent real-time streams")
    ax.set_ylabel("end of speech to FINAL (ms)")
    ax.set_title("Streaming latency, tiny.en, 2 CPU cores (no batching)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "streaming.png", dpi=110)
    print(f"wrote {path} and {RESULTS / 'streaming.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
