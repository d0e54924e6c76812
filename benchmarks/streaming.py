"""N concurrent real-time edge streams against a local cluster: end-of-speech to FINAL latency, partials.

Three clusters in one run: continuous batching in the decoder (``--max-batch 16``), none
(``--max-batch 1``), and batching without speculative finals (``--speculate-after-s 0``: the FINAL
starts at the EOU, not in the pause before it). For each N it prints p50/p95/p99 from end of speech to FINAL, the
partial cadence, WER and the decoder's batch-size histogram, and writes
benchmarks/results/streaming.json + streaming.png.

"End of speech" is the edge endpointer's decision (the EOU is sent); the user-perceived time from
the last voiced sample adds the endpointer's trailing silence (0.8 s by default, or the clip's tail
at end of file), which is also reported.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
import urllib.request
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


def batch_histogram(url: str) -> dict[str, float]:
    """Cumulative bucket counts of the decoder's batch-size histogram, from its /metrics."""
    text = urllib.request.urlopen(url.replace("ws://", "http://") + "/metrics", timeout=10).read().decode()
    pattern = r'^splitasr_batch_size_bucket\{le="([^"]+)",stage="dec"\} ([0-9.e+]+)$'
    return {le: float(v) for le, v in re.findall(pattern, text, re.M)}


def histogram_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Steps per batch-size bucket between two cumulative snapshots ("<=1", "<=2", ...)."""
    out, previous = {}, 0.0
    for le in sorted(after, key=lambda x: float(x)):
        cumulative = after[le] - before.get(le, 0.0)
        if cumulative - previous:
            out[f"<={float(le):g}"] = int(cumulative - previous)
        previous = cumulative
    return out


def run_config(name: str, shard_args: tuple[str, ...], args, clips) -> dict:
    chain = ChainSpec("tiny.en", enc_a=args.stage0_replicas, int8=True, shard_args=shard_args)
    out = {}
    with LocalCluster([chain]) as cluster:
        urls = cluster.stage0_urls("tiny.en")
        dec = next(s for s in cluster.shards if s.role == "dec")
        for n in (int(x) for x in args.streams.split(",")):
            before = batch_histogram(dec.url)
            started = time.monotonic()
            results, gaps = asyncio.run(run_streams(urls, clips, n))
            wall = time.monotonic() - started
            finals = [f for _, r in results for f in r.finals]
            lat = [f.eou_latency_s * 1000 for f in finals]
            speech = [f.latency_s * 1000 for f in finals]
            tally = WERTally()
            for entry, report in results:
                tally.add(entry.reference, " ".join(f.text for f in sorted(report.finals, key=lambda f: f.utt)))
            out[n] = {
                "finals": len(lat),
                "final_ms_p50": pct(lat, 50),
                "final_ms_p95": pct(lat, 95),
                "final_ms_p99": pct(lat, 99),
                "speech_end_to_final_ms_p50": pct(speech, 50),
                "speech_end_to_final_ms_p99": pct(speech, 99),
                "partial_gap_s_p50": pct(gaps, 50),
                "partial_gap_s_p95": pct(gaps, 95),
                "wer": tally.wer,
                "wall_s": wall,
                "decoder_batch_sizes": histogram_delta(before, batch_histogram(dec.url)),
                "final_ms": lat,
            }
            print(f"{name} N={n}: done in {wall:.1f} s", flush=True)
    return out


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
    configs = {
        "batched": ("--max-batch", "16"),
        "unbatched": ("--max-batch", "1"),
        "batched, no speculation": ("--max-batch", "16", "--speculate-after-s", "0"),
    }
    results = {name: run_config(name, shard_args, args, clips) for name, shard_args in configs.items()}
    print(
        "\nEOU -> FINAL (ms), speech end -> FINAL p50 (ms), partial cadence (s); tiny.en int8, "
        f"{args.stage0_replicas} stage-0 replicas + enc_b + dec, 1 thread each, 2 cores"
    )
    rows = []
    for name, out in results.items():
        for n, r in out.items():
            rows.append(
                [
                    name,
                    n,
                    r["finals"],
                    round(r["final_ms_p50"]),
                    round(r["final_ms_p95"]),
                    round(r["final_ms_p99"]),
                    round(r["speech_end_to_final_ms_p50"]),
                    round(r["partial_gap_s_p50"], 2),
                    f"{r['wer'] * 100:.1f}%",
                ]
            )
    print_table(["decoder", "streams", "finals", "p50", "p95", "p99", "speech end p50", "partial gap p50", "WER"], rows)
    print("\ndecoder batch sizes (steps per bucket):")
    for name, out in results.items():
        for n, r in out.items():
            print(f"  {name:23s} N={n:2d}: {r['decoder_batch_sizes']}")
    path = write_json(
        "streaming",
        {
            "model": "tiny.en",
            "int8": True,
            "stage0_replicas": args.stage0_replicas,
            "latency": "final_ms_*: EOU sent -> FINAL received; speech_end_*: last voiced sample -> FINAL",
            "results": results,
        },
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, out in results.items():
        ns = list(out)
        for key, style in (("final_ms_p50", "-"), ("final_ms_p99", "--")):
            ax.plot(ns, [out[n][key] for n in ns], style, marker="o", label=f"{name} {key[-3:]}")
    ax.set_xlabel("concurrent real-time streams")
    ax.set_ylabel("EOU to FINAL (ms)")
    ax.set_title("Streaming latency, tiny.en int8, 2 CPU cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "streaming.png", dpi=110)
    print(f"wrote {path} and {RESULTS / 'streaming.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
