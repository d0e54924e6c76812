"""The split point: log-mel features vs encoder A on the edge, on a fast and a slow uplink, in one run.

One tiny.en chain (one replica per stage, 1 thread each); an edge with 2 threads for its encoder A.
Long-form real-speech streams (``shared/longform.py``) play in real time through each
configuration: split ``features`` and ``enc_a`` on the direct loopback link ("fast") and through
a shaping proxy (``--uplink`` bytes/s, ``--delay-ms`` each way: "slow"), then ``auto`` on both
links. Reports uplink bytes per second of speech, end of speech -> FINAL and EOU -> FINAL, WER
against the references, and faster-whisper tiny.en int8 (greedy, its defaults) on the same files.
Writes benchmarks/results/split.json + split.png.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import bar_plot, machine, print_table, write_json  # noqa: E402
from streaming import pct, true_end_latencies  # noqa: E402

from splitasr.cloud.faultproxy import FaultProxy  # noqa: E402
from splitasr.cloud.local_cluster import ChainSpec, LocalCluster  # noqa: E402
from splitasr.edge.agent import AgentOptions, EdgeAgent  # noqa: E402
from splitasr.edge.audio_in import file_source  # noqa: E402
from splitasr.shared.audio import load_audio  # noqa: E402
from splitasr.shared.errors import EdgeError  # noqa: E402
from splitasr.shared.longform import build_streams  # noqa: E402
from splitasr.shared.wer import WERTally  # noqa: E402


def play(url: str, streams, split: str, threads: int, heartbeat_s: float):
    runs = []
    for s in streams:
        options = AgentOptions(
            shards=(url,),
            language="en",
            split=split,
            encoder_threads=threads,
            heartbeat_s=heartbeat_s,
            final_timeout_s=90,
        )
        try:
            runs.append((s, asyncio.run(EdgeAgent(options).run(file_source(s.path, realtime=True)))))
        except EdgeError as exc:  # enc_a on a slow uplink: windows outlast the shard's ENCODE timeout
            return {"error": f"{s.path.name}: {exc}"}
    return runs


def summarise(runs) -> dict:
    tally, lat, eou, sent, speech, finals, utts, chosen = WERTally(), [], [], 0, 0.0, 0, 0, []
    for s, report in runs:
        spoken = sorted((f for f in report.finals if f.text), key=lambda f: f.utt)
        tally.add(s.reference, " ".join(f.text for f in spoken))
        lat += true_end_latencies(s, spoken)
        eou += [f.eou_latency_s for f in spoken]
        sent, speech = sent + report.bytes_sent, speech + report.speech_s
        finals, utts = finals + len(report.finals), utts + report.utterances
        chosen += report.splits
    costs = runs[0][1].split_costs[0] if runs[0][1].split_costs else {}
    return {
        "splits": sorted(set(chosen)),
        "finals": finals,
        "utterances": utts,
        "duplicates": sum(r.duplicate_finals for _, r in runs),
        "wer": round(tally.wer, 4),
        "words": tally.words,
        "uplink_bytes_per_speech_s": round(sent / speech),
        "end_to_final_ms_p50": round(pct(lat, 50) * 1000),
        "end_to_final_ms_p90": round(pct(lat, 90) * 1000),
        "eou_to_final_ms_p50": round(pct(eou, 50) * 1000),
        "eou_to_final_ms_p90": round(pct(eou, 90) * 1000),
        "edge_encode_s": round(sum(r.edge_encode_s for _, r in runs), 2),
        "auto_costs": {k: round(v, 5) if isinstance(v, float) else v for k, v in costs.items() if k != "url"},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2, help="long-form streams")
    parser.add_argument("--per-stream", type=int, default=4, help="clips per stream")
    parser.add_argument("--uplink", type=float, default=24_000.0, help="slow link: uplink bytes/s")
    parser.add_argument("--delay-ms", type=float, default=40.0, help="slow link: one-way delay")
    parser.add_argument("--edge-threads", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="splitasr-split-"))
    streams = build_streams(workdir / "streams", count=args.count, per_stream=args.per_stream, min_clip_s=2.0)

    from splitasr.models.reference import faster_whisper_default

    fw = faster_whisper_default("tiny.en", "int8", threads=2)
    fw_tally = WERTally()
    for s in streams:
        fw_tally.add(s.reference, fw(load_audio(s.path), "en"))
    del fw
    results: dict[str, dict] = {}
    with LocalCluster([ChainSpec("tiny.en", enc_a=1, threads=1)], workdir=workdir / "cluster") as cluster:
        url = cluster.stage0_urls("tiny.en")[0]
        host, port = url.removeprefix("ws://").split(":")
        with FaultProxy(host, int(port), name="slow-link") as proxy:
            proxy.shape(uplink_bytes_s=args.uplink, delay_s=args.delay_ms / 1000)
            links = {"fast": url, "slow": proxy.url()}
            for split in ("features", "enc_a", "auto"):
                for link, target in links.items():
                    key = f"{split} / {link}"
                    # on the slow link a window's activations hold the uplink for seconds: the
                    # edge's pings wait behind them, so the heartbeat must be longer (docs/split.md)
                    heartbeat_s = 1.0 if link == "fast" else 20.0
                    runs = play(target, streams, split, args.edge_threads, heartbeat_s)
                    summary = runs if isinstance(runs, dict) else summarise(runs)
                    results[key] = {"split": split, "link": link, **summary}
                    print(f"{key}: done", flush=True)
    heads = [
        "split / link",
        "chosen",
        "FINALs",
        "WER",
        "FW WER",
        "uplink B/s",
        "end->FINAL p50/p90 ms",
        "EOU->FINAL p50/p90 ms",
    ]
    rows = [
        [
            k,
            ",".join(r["splits"]),
            f"{r['finals']}/{r['utterances']}",
            f"{r['wer'] * 100:.1f}%",
            f"{fw_tally.wer * 100:.1f}%",
            r["uplink_bytes_per_speech_s"],
            f"{r['end_to_final_ms_p50']}/{r['end_to_final_ms_p90']}",
            f"{r['eou_to_final_ms_p50']}/{r['eou_to_final_ms_p90']}",
        ]
        for k, r in results.items()
        if "error" not in r
    ] + [[k, "failed: " + r["error"][:90], "", "", "", "", "", ""] for k, r in results.items() if "error" in r]
    print(
        f"\ntiny.en fp32, 1 replica per stage (1 thread); edge encoder A {args.edge_threads} threads; "
        f"slow link {args.uplink:.0f} B/s up, {args.delay_ms:.0f} ms each way"
    )
    print_table(heads, rows)
    for k in ("auto / fast", "auto / slow"):
        print(k, results[k].get("auto_costs"))
    payload = {
        "machine": machine(),
        "streams": [str(s.path.name) for s in streams],
        "faster_whisper_wer": round(fw_tally.wer, 4),
        "slow_link": {"uplink_bytes_s": args.uplink, "delay_ms": args.delay_ms},
        "edge_threads": args.edge_threads,
        "results": results,
    }
    print(write_json("split", payload))
    labels = [k for k, r in results.items() if "error" not in r]
    bar_plot(
        "split",
        labels,
        [results[k]["eou_to_final_ms_p50"] for k in labels],
        "EOU -> FINAL p50 (ms)",
        "split point: features vs encoder A on the edge",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
