"""Capacity on one machine: real-time streams of real speech, ramped (4, 8, 16, 24, 32, 48, ...) until
p99 end of speech -> FINAL breaks the SLO, for three systems in one run:

- ``split``: ``splitasr up`` with per-stage pools (stage 0, encoder B, decoder each autoscaled);
- ``monolith``: the same stages in one process per replica (``--whole-chain``; only stage 0 scales);
- ``faster-whisper``: faster-whisper tiny.en int8 behind a minimal per-utterance server
  (``benchmarks/fw_server.py``), fed the utterances the same edge endpointing cut.

A system's ramp goes on past the SLO until p99 exceeds ``--stop-at`` x the SLO, so each curve
shows its knee; the largest N within the SLO is the last step before the first that missed it.

Load: the long-form real-speech streams of ``shared/longform.py`` (utterances with pauses of
0.5-8 s, several rates, stereo, noise). The edge pipeline (VAD, endpointing, log-mel, int8 frames)
runs once per stream before the ramp, and its frames are replayed at their stream times, so the N
edges cost the machine only their sockets (on a real deployment they run on the devices). Stream i
plays long-form stream i mod ``--count``, streams start 0.25 s x i / N apart. Latency runs from an
utterance's true end (its last voiced sample) to its FINAL (for faster-whisper: to its answer,
requested when the edge sends the EOU). Each step also reports WER against the streams'
references, FINALs, and per-stage busy cores and mean queue delay (from the processes' own
/metrics, or the server's timings).

Writes benchmarks/results/capacity.json + capacity.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import line_plot, machine, print_table, recorded_streams, write_json  # noqa: E402
from streaming import pct, true_end_latencies  # noqa: E402

from splitasr.cloud.coordinator.launch import CoordinatorProcess  # noqa: E402
from splitasr.cloud.shard.roles import ROLES  # noqa: E402
from splitasr.edge.agent import AgentOptions, EdgeAgent, EdgeFrame, replay_frames  # noqa: E402
from splitasr.shared import protocol as p  # noqa: E402
from splitasr.shared.audio import load_audio  # noqa: E402
from splitasr.shared.longform import LongStream  # noqa: E402
from splitasr.shared.protocol import http_url  # noqa: E402
from splitasr.shared.wer import WERTally  # noqa: E402

ADMIN = "capacity-bench"
SYSTEMS = ("split", "monolith", "faster-whisper")
STAGE_OF = {onnx: role for role, cls in ROLES.items() for onnx in cls.onnx_stages}  # ONNX stage -> shard role


def pool_config(whole_chain: bool, max_replicas: int) -> dict:
    """The same stage-0 autoscaler for both; the split pipeline's later stages scale too."""
    pool = {
        "model": "tiny.en",
        "languages": ["en"],
        "int8": True,
        "whole_chain": whole_chain,
        "autoscaler": {
            "target_sessions_per_replica": 16,
            "min_replicas": 1,
            "max_replicas": max_replicas,
            "warm_spares": 0,
        },
    }
    if not whole_chain:
        pool["enc_b_autoscaler"] = {"max_replicas": max_replicas}
        pool["dec_autoscaler"] = {"max_replicas": max_replicas}
    return {"decision_period_s": 1.0, "pools": [pool]}


@dataclass
class Answer:
    """A FINAL as ``true_end_latencies`` reads it (stream times, seconds)."""

    text: str
    start_s: float
    end_s: float
    received_s: float


# -- metrics of the serving processes ---------------------------------------------------------------
def scrape(urls: list[str]) -> dict:
    """Summed compute seconds per stage and queue-delay sum/count over the shards' /metrics."""
    out = {"stage_s": {}, "queue_sum": 0.0, "queue_count": 0.0}
    for url in urls:
        try:
            with urllib.request.urlopen(f"{http_url(url)}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            continue
        for stage, value in re.findall(r'^splitasr_stage_seconds_sum\{stage="(\w+)"\} (\S+)$', text, re.M):
            out["stage_s"][STAGE_OF.get(stage, stage)] = out["stage_s"].get(STAGE_OF.get(stage, stage), 0) + float(
                value
            )
        for name, key in (("sum", "queue_sum"), ("count", "queue_count")):
            m = re.search(rf"^splitasr_queue_delay_seconds_{name} (\S+)$", text, re.M)
            out[key] += float(m.group(1)) if m else 0.0
    return out


def shard_urls(cluster: CoordinatorProcess) -> tuple[list[str], dict]:
    pool = cluster.get("/v1/pools")["pools"][0]
    urls = [s["url"] for s in pool["shards"] if s["breaker"] != "open"]
    replicas = {stage: st["replicas"] for stage, st in pool.get("stages", {}).items()}
    return urls, replicas


def stage_figures(before: dict, after: dict, wall_s: float) -> dict:
    busy = {k: round((after["stage_s"].get(k, 0) - v) / wall_s, 3) for k, v in before["stage_s"].items()}
    for k, v in after["stage_s"].items():  # shards that started during the step
        busy.setdefault(k, round(v / wall_s, 3))
    n = after["queue_count"] - before["queue_count"]
    wait = (after["queue_sum"] - before["queue_sum"]) / n if n > 0 else 0.0
    return {"busy_cores": busy, "mean_queue_delay_ms": round(wait * 1000, 1)}


# -- load -------------------------------------------------------------------------------------------
async def replay_split(url: str, stream: LongStream, frames: list[EdgeFrame], i: int, n: int):
    await asyncio.sleep(0.25 * i / n)  # staggered arrivals
    agent = EdgeAgent(AgentOptions(coordinator=url, device_id=f"cap-{i}", language="en", final_timeout_s=120))
    report = await agent.run_frames(replay_frames(frames))
    return [Answer(f.text, f.start_s, f.end_s, f.received_s) for f in report.finals if f.text]


async def replay_fw(url: str, stream: LongStream, frames: list[EdgeFrame], i: int, n: int, timings: list):
    """The same endpointing; each utterance's audio goes to the server when the edge would send its EOU."""
    await asyncio.sleep(0.25 * i / n)
    audio = load_audio(stream.path)
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    answers, tasks = [], []
    start = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:

        async def ask(first: int, last: int) -> None:
            async with http.post(f"{url}/v1/transcribe?language=en", data=pcm[first:last].tobytes()) as resp:
                body = await resp.json()
            timings.append(body)
            if body["text"]:
                answers.append(Answer(body["text"], first / 16000, last / 16000, time.monotonic() - start))

        async for item in replay_frames(frames):
            if isinstance(item.frame, p.EndOfUtterance):
                first, last, _ = item.ended
                tasks.append(asyncio.create_task(ask(first, last)))
        await asyncio.gather(*tasks)
    return answers


# -- systems ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def fw_server(workdir: Path, workers: int, threads: int):
    ready = workdir / "fw.ready.json"
    log = (workdir / "fw.log").open("wb")
    cmd = [sys.executable, str(Path(__file__).with_name("fw_server.py")), "--ready-file", str(ready)]
    proc = subprocess.Popen([*cmd, "--workers", str(workers), "--threads", str(threads)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"faster-whisper server did not start; see {workdir / 'fw.log'}")
            time.sleep(0.1)  # polling another process's ready file
        yield json.loads(ready.read_text())["url"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def run_step(system: str, url: str, streams, recorded, n: int, cluster) -> dict:
    timings: list[dict] = []
    before = scrape(shard_urls(cluster)[0]) if cluster else None
    started = time.monotonic()

    async def all_streams():
        jobs = []
        for i in range(n):
            k = i % len(streams)
            if system == "faster-whisper":
                jobs.append(replay_fw(url, streams[k], recorded[k], i, n, timings))
            else:
                jobs.append(replay_split(url, streams[k], recorded[k], i, n))
        return await asyncio.gather(*jobs)

    results = asyncio.run(all_streams())
    wall = time.monotonic() - started
    tally, latencies, finals, expected = WERTally(), [], 0, 0
    for i, answers in enumerate(results):
        s = streams[i % len(streams)]
        answers = sorted(answers, key=lambda a: a.start_s)
        tally.add(s.reference, " ".join(a.text for a in answers))
        latencies += true_end_latencies(s, answers)
        finals += len(answers)
        expected += s.expected_finals()
    row = {
        "streams": n,
        "finals": finals,
        "utterances": expected,
        "wer": round(tally.wer, 4),
        "p50_s": round(pct(latencies, 50), 3),
        "p99_s": round(pct(latencies, 99), 3),
        "wall_s": round(wall, 1),
    }
    if cluster is not None:
        urls, replicas = shard_urls(cluster)
        row.update(stage_figures(before, scrape(urls), wall), replicas=replicas)
    else:
        waits = [t["wait_s"] for t in timings]
        row.update(
            busy_cores={"faster-whisper": round(sum(t["compute_s"] for t in timings) / wall, 3)},
            mean_queue_delay_ms=round(1000 * sum(waits) / max(1, len(waits)), 1),
        )
    return row


def within_slo(rows: list[dict], slo_s: float) -> int:
    """The largest N of the ramp up to which every step met the SLO (0: the first step did not)."""
    best = 0
    for row in rows:
        if row["p99_s"] > slo_s:
            break
        best = row["streams"]
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ramp", default="4,8,16,24,32,48")
    parser.add_argument("--slo-s", type=float, default=2.0, help="p99 end of speech -> FINAL")
    parser.add_argument("--stop-at", type=float, default=2.0, help="stop a system's ramp at p99 > this x SLO")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--count", type=int, default=16, help="distinct long-form streams")
    parser.add_argument("--per-stream", type=int, default=4, help="real clips per long-form stream")
    parser.add_argument("--max-replicas", type=int, default=2, help="per stage (split) / per pool (monolith)")
    parser.add_argument("--fw-workers", type=int, default=2)
    parser.add_argument("--name", default="capacity")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="splitasr-capacity-"))
    streams, recorded = recorded_streams(workdir, args.count, args.per_stream)
    ramp = [int(x) for x in args.ramp.split(",")]
    results: dict[str, dict] = {}
    for system in args.systems.split(","):
        rows = []
        if system == "faster-whisper":
            context = fw_server(workdir, args.fw_workers, 1)
        else:
            config = pool_config(system == "monolith", args.max_replicas)
            context = CoordinatorProcess(config, workdir / system, admin_token=ADMIN, ready_timeout_s=240)
        with context as handle:
            cluster = handle if isinstance(handle, CoordinatorProcess) else None
            url = cluster.url if cluster else handle
            for n in ramp:
                row = run_step(system, url, streams, recorded, n, cluster)
                rows.append(row)
                print(
                    f"{system} N={n}: p99 {row['p99_s']:.2f} s, WER {row['wer'] * 100:.1f} %, "
                    f"busy {row['busy_cores']}, queue {row['mean_queue_delay_ms']} ms",
                    flush=True,
                )
                if row["p99_s"] > args.stop_at * args.slo_s:  # past the knee: the curve is drawn
                    break
        results[system] = {"max_streams_within_slo": within_slo(rows, args.slo_s), "steps": rows}
    best = {k: v["max_streams_within_slo"] for k, v in results.items()}
    print(f"\nSLO: p99 end of speech -> FINAL <= {args.slo_s} s; tiny.en int8; {os.cpu_count()} cores")
    table = []
    for system, r in results.items():
        knee = next((s for s in r["steps"] if s["streams"] == r["max_streams_within_slo"]), r["steps"][0])
        table.append(
            [
                system,
                r["max_streams_within_slo"],
                f"{knee['wer'] * 100:.1f}%",
                knee["p50_s"],
                knee["p99_s"],
                json.dumps(knee["busy_cores"]),
                knee["mean_queue_delay_ms"],
            ]
        )
    print_table(["system", "max N in SLO", "WER at N", "p50 s", "p99 s", "busy cores by stage", "queue ms"], table)
    if best.get("split") and len(best) > 1:
        for other, n in best.items():
            if other != "split" and n:
                print(f"split / {other}: {best['split'] / n:.2f}x the streams")
    path = write_json(
        args.name,
        {
            "machine": machine(),
            "slo_p99_s": args.slo_s,
            "latency": "true end of the utterance (last voiced sample) -> FINAL received",
            "streams": [{"file": s.path.name, "utterances": len(s.utterances)} for s in streams],
            "systems": results,
        },
    )
    curves = {
        f"{k} p99": ([s["streams"] for s in r["steps"]], [s["p99_s"] for s in r["steps"]], "-o")
        for k, r in results.items()
    }
    png = line_plot(
        args.name,
        curves,
        "concurrent real-time streams",
        "end of speech to FINAL p99 (s)",
        f"Capacity, tiny.en int8, {os.cpu_count()} CPU cores",
        hline=(args.slo_s, "SLO"),
    )
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
