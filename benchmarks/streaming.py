"""Streaming on long-form real speech in real time: FINAL WER against offline, FINAL counts, and end of
speech to FINAL latency, for several endpoint silences at 1 and 16 concurrent streams.

Streams: ``shared/longform.py`` strings real clips of ``samples/real`` together with pauses of
0.5–8 s at 8, 16, 22.05, 44.1 (stereo) and 48 kHz, some with noise; clips less than a second apart
count as one utterance. Each stream runs through ``splitasr edge``'s agent (Silero VAD) against a
local cluster (tiny.en int8: stage-0 replicas + enc_b + dec, one thread each) in real time; N
streams run at once, stream i playing long-form stream i mod ``--count`` (16 streams of 8 clips: the
102 English clips, some twice in other company and formats). An N=1 row plays ``--solo`` streams
(all 16) one after another, so that it holds the same words as the N=16 row (a subset of 4
streams held 212 words, too few: one falsetto sentence the VAD misses moved its WER by 4 points).
Latency runs from the utterance's true end (its last voiced sample in the stream) to the FINAL's
arrival. The offline WER of each row is ``Recognizer.transcribe`` (default settings) on exactly the
stream files that row played, so a stream played twice counts twice on both sides. Writes
benchmarks/results/streaming.json + streaming.png (``--name`` changes the name).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import line_plot, print_table, write_json  # noqa: E402

from splitasr.cloud.local_cluster import ChainSpec, LocalCluster  # noqa: E402
from splitasr.edge.agent import AgentOptions, EdgeAgent  # noqa: E402
from splitasr.edge.audio_in import file_source  # noqa: E402
from splitasr.edge.segmenter import SegmenterOptions  # noqa: E402
from splitasr.shared.longform import LongStream, build_streams  # noqa: E402
from splitasr.shared.wer import WERTally  # noqa: E402


def pct(xs, q):
    return float(np.percentile(xs, q)) if xs else float("nan")


async def run_streams(urls: list[str], streams: list[LongStream], n: int, silence_s: float, solo: int = 1):
    """``n`` streams at once; with ``n == 1``, ``solo`` streams one after another (more words per row)."""
    if n == 1 and solo > 1:
        return [run for i in range(solo) for run in await run_streams(urls, streams[i:], 1, silence_s)]

    async def one(i: int):
        s = streams[i % len(streams)]
        order = tuple(urls[i % len(urls) :] + urls[: i % len(urls)])  # spread over stage-0 replicas
        options = AgentOptions(
            shards=order,
            device_id=f"bench-{i}",
            language="en",
            segmenter=SegmenterOptions(trailing_silence_s=silence_s),
        )
        await asyncio.sleep(0.25 * i / max(n, 1))  # staggered arrivals
        return s, await EdgeAgent(options).run(file_source(s.path, realtime=True))

    return await asyncio.gather(*(one(i) for i in range(n)))


def true_end_latencies(s: LongStream, finals) -> list[float]:
    """For each true utterance, its FINAL's arrival minus the utterance's last voiced sample (s)."""
    out = []
    for u in s.utterances:
        overlapping = [f for f in finals if f.text and f.start_s < u.end_s + 0.5 and f.end_s > u.start_s - 0.5]
        if overlapping:  # the FINAL that completes this utterance: the last one covering it
            out.append(max(f.received_s for f in overlapping) - u.end_s)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", default="1,16")
    parser.add_argument("--silences", default="0.5,0.8,1.2", help="endpoint trailing silences (s)")
    parser.add_argument("--stage0-replicas", type=int, default=2)
    parser.add_argument("--count", type=int, default=16, help="long-form streams (16 x 8 clips cover the English set)")
    parser.add_argument("--per-stream", type=int, default=8, help="clips per long-form stream")
    parser.add_argument("--solo", type=int, default=16, help="N=1 rows play this many streams, one at a time")
    parser.add_argument("--name", default="streaming", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    from splitasr.cloud.shard.recognizer import Recognizer

    workdir = Path(tempfile.mkdtemp(prefix="splitasr-longform-"))
    streams = build_streams(workdir, count=args.count, per_stream=args.per_stream)
    rec = Recognizer.load("tiny.en", int8=True, threads=2, show_progress=False)
    offline_texts = {s.path: rec.transcribe_file(s.path).text for s in streams}
    utterances = sum(len(s.utterances) for s in streams)
    audio_s = sum(s.utterances[-1].end_s + 2.5 for s in streams)
    print(f"{len(streams)} long-form streams, {utterances} utterances, ~{audio_s:.0f} s")
    del rec
    results: dict[str, dict] = {}
    chain = ChainSpec("tiny.en", enc_a=args.stage0_replicas, int8=True)
    with LocalCluster([chain], workdir=workdir / "cluster") as cluster:
        urls = cluster.stage0_urls("tiny.en")
        for silence in (float(x) for x in args.silences.split(",")):
            for n in (int(x) for x in args.streams.split(",")):
                started = time.monotonic()
                runs = asyncio.run(run_streams(urls, streams, n, silence, args.solo))
                wall = time.monotonic() - started
                tally, offline, lat, eou, finals, expected, empty = WERTally(), WERTally(), [], [], 0, 0, 0
                for s, report in runs:
                    offline.add(s.reference, offline_texts[s.path])
                    spoken = [f for f in report.finals if f.text]
                    tally.add(s.reference, " ".join(f.text for f in sorted(spoken, key=lambda f: f.utt)))
                    lat += true_end_latencies(s, spoken)
                    eou += [f.eou_latency_s for f in spoken]
                    finals += len(spoken)
                    expected += s.expected_finals()
                    empty += report.empty_finals
                key = f"silence {silence:g} s, N={n}"
                results[key] = {
                    "endpoint_silence_s": silence,
                    "streams": n,
                    "streams_played": len(runs),  # N=1: --solo streams, one after another
                    "finals": finals,
                    "utterances": expected,
                    "empty_finals": empty,
                    "wer": round(tally.wer, 4),
                    "offline_wer": round(offline.wer, 4),
                    "end_to_final_ms_p50": round(pct(lat, 50) * 1000),
                    "end_to_final_ms_p95": round(pct(lat, 95) * 1000),
                    "end_to_final_ms_p99": round(pct(lat, 99) * 1000),
                    "eou_to_final_ms_p50": round(pct(eou, 50) * 1000),
                    "wall_s": round(wall, 1),
                }
                print(f"{key}: done in {wall:.0f} s", flush=True)
    print(f"\ntiny.en int8, {args.stage0_replicas} stage-0 replicas + enc_b + dec (1 thread each), 2 cores")
    rows = [
        [
            r["endpoint_silence_s"],
            r["streams"],
            f"{r['finals']}/{r['utterances']}",
            f"{r['wer'] * 100:.1f}%",
            f"{r['offline_wer'] * 100:.1f}%",
            r["end_to_final_ms_p50"],
            r["end_to_final_ms_p95"],
            r["end_to_final_ms_p99"],
            r["eou_to_final_ms_p50"],
        ]
        for r in results.values()
    ]
    headers = ["endpoint s", "streams", "FINALs/expected", "WER", "offline WER", "end->FINAL p50", "p95", "p99"]
    print_table([*headers, "EOU->FINAL p50"], rows)
    path = write_json(
        args.name,
        {
            "model": "tiny.en",
            "int8": True,
            "stage0_replicas": args.stage0_replicas,
            "streams": [{"file": s.path.name, "utterances": len(s.utterances)} for s in streams],
            "latency": "end_to_final: true end of the utterance (last voiced sample) -> FINAL received",
            "results": results,
        },
    )
    series = {}
    for n in sorted({r["streams"] for r in results.values()}):
        rs = [r for r in results.values() if r["streams"] == n]
        xs = [r["endpoint_silence_s"] for r in rs]
        series[f"N={n} p50"] = (xs, [r["end_to_final_ms_p50"] for r in rs], "-o")
        series[f"N={n} p99"] = (xs, [r["end_to_final_ms_p99"] for r in rs], "--o")
    png = line_plot(
        args.name,
        series,
        "endpoint trailing silence (s)",
        "end of speech to FINAL (ms)",
        "Streaming long-form real speech, tiny.en int8, 2 CPU cores",
    )
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
