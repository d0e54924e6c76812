"""Every stage is a pool: a decoder-bound load scales the decoder pool out, the new replica takes
work at once, and scaling in drains a decoder with nothing lost. Real processes, real speech.

The decoder is made the bottleneck by its batch limit (``--max-batch 1``: one sequence at a time,
so partials and finals of six real-time streams queue at the decoder while the encoders idle),
and its queue-delay budget is raised so that partials, the steady part of the load, keep coming.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request

import pytest

from splitasr.shared.protocol import http_url
from tests.cluster import LONG_REAL as LONG
from tests.cluster import CoordinatorProcess, EdgeStreams, wait_until

pytestmark = pytest.mark.integration


DECODER_BOUND = {
    "decision_period_s": 0.5,
    "pools": [
        {
            "model": "tiny.en",
            "zones": ["a"],
            # partials keep coming while the decoder queues (the default budget would stop them at 0.5 s)
            "shard_args": ["--max-batch", "1", "--queue-budget-s", "5"],
            "autoscaler": {"min_replicas": 1, "max_replicas": 1, "warm_spares": 0, "predictive": False},
            "enc_b_autoscaler": {"max_replicas": 1},
            "dec_autoscaler": {
                "max_replicas": 2,
                "target_busy": 0.5,
                "predictive": False,
                "stable_window_s": 6,
                "panic_window_s": 2,
                "scale_in_stabilization_s": 8,
            },
        }
    ],
}


def decoders(cluster: CoordinatorProcess) -> list[dict]:
    return [s for s in cluster.pool()["shards"] if s["stage"] == "dec"]


def stage_requests(shard: dict) -> float:
    """STAGE_REQs the shard has taken, from its own /metrics (exact, not a heartbeat late)."""
    with urllib.request.urlopen(f"{http_url(shard['url'])}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    match = re.search(r"^splitasr_stage_requests_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(0.99 * len(values)))] if values else float("nan")


def finish(futures, timeout_s: float = 180.0):
    reports = [f.result(timeout=timeout_s) for f in futures]
    for r in reports:  # nothing lost, nothing twice
        assert r.utterances >= 1 and sorted(f.utt for f in r.finals) == list(range(r.utterances)), r
    return reports


def test_decoder_bound_load_scales_the_decoder_pool_out_and_in(tmp_path, tiny_artifacts):
    edges = EdgeStreams()
    with CoordinatorProcess(tmp_path, DECODER_BOUND) as cluster:
        try:
            first = {s["shard_id"] for s in decoders(cluster)}
            assert len(first) == 1
            started = time.monotonic()
            heavy = [edges.start(LONG[i % 2], cluster.url, device_id=f"heavy-{i}") for i in range(6)]

            def new_decoder():
                return next((s for s in decoders(cluster) if s["shard_id"] not in first), None)

            added = wait_until(new_decoder, 90, "the coordinator to add a decoder")
            registered = time.monotonic()
            wait_until(lambda: stage_requests(added) > 0, 10, "the new decoder to take a request")
            took_work_s = time.monotonic() - registered
            scaled_at = registered - started
            stage = cluster.pool()["stages"]["dec"]
            print(f"decoder added {scaled_at:.1f} s into the load; took work {took_work_s:.2f} s after registering")
            print("dec scaling:", json.dumps(stage["scaling"]))
            assert took_work_s <= 2.0
            assert stage["desired"] == 2 and "reactive" in stage["scaling"][-1]["reason"]
            # the pool shares the work: over the next seconds of the same load, the new replica takes its part
            old = next(s for s in decoders(cluster) if s["shard_id"] in first)
            counts = {"old": stage_requests(old), "new": stage_requests(added)}
            wait_until(lambda: time.monotonic() - registered > 8, 10, "8 s of load on two decoders", every_s=0.5)
            share = (stage_requests(added) - counts["new"]) / max(
                1.0, stage_requests(added) - counts["new"] + stage_requests(old) - counts["old"]
            )
            after = cluster.pool()["stages"]["dec"]
            print(
                f"new decoder's share of requests {share:.2f}; decoder queue delay {stage['queue_delay_ms']} ms at "
                f"scale-out, {after['queue_delay_ms']} ms 8 s later; busy {stage['busy']} -> {after['busy']}"
            )
            assert not any(f.done() for f in heavy), "the load ended too early to measure the shared work"
            assert share >= 0.25

            reports = finish(heavy)
            latencies = [f.latency_s for r in reports for f in r.finals]
            print(f"end of speech -> FINAL p99 over the heavy load: {p99(latencies):.2f} s ({len(latencies)} FINALs)")

            # lighter load: the decoder pool scales in while these stream; the drained one exits
            light = [edges.start(LONG[i], cluster.url, device_id=f"light-{i}") for i in range(2)]
            by_id = {s["shard_id"]: s for s in decoders(cluster)}
            drained = wait_until(
                lambda: next((s for s in decoders(cluster) if s["draining"]), None), 60, "a decoder to drain"
            )
            scaling = cluster.pool()["stages"]["dec"]["scaling"]
            print("dec scaling:", json.dumps(scaling[-2:]))
            assert any(d["replicas"] == 1 for d in scaling), "the drain was not a scale-in decision"
            pid = by_id[drained["shard_id"]]["pid"]
            wait_until(lambda: not pid_running(pid), 30, "the drained decoder to exit")
            assert not any(r.reconnects for r in finish(light))
            # the exited decoder leaves the pool. How many replicas the light load then needs is the
            # autoscaler's call on this machine's speed (a loaded CI machine may scale out again).
            wait_until(
                lambda: drained["shard_id"] not in {s["shard_id"] for s in decoders(cluster)},
                30,
                "the coordinator to forget the drained decoder",
            )
        finally:
            edges.close()
