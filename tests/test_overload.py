"""More streams than a shard admits: admitted sessions get every FINAL, the others a typed refusal,
queues and memory stay bounded (real shard processes on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

import pytest

from splitasr.cloud.local_cluster import ChainSpec, LocalCluster
from splitasr.edge.agent import AgentOptions, EdgeAgent
from splitasr.edge.audio_in import file_source
from splitasr.shared.errors import SessionRejectedError

pytestmark = pytest.mark.integration

CAPACITY, STREAMS = 3, 8


def _metric(url: str, name: str, labels: str = "") -> float:
    http = url.replace("ws://", "http://").rstrip("/")
    text = urllib.request.urlopen(f"{http}/metrics", timeout=10).read().decode()
    match = re.search(rf"^{name}{re.escape(labels)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


def test_overload_admits_up_to_capacity_and_refuses_the_rest(tmp_path, manifest, tiny_artifacts):
    clips = [e.file for e in manifest if e.language == "en"]
    args = ("--max-sessions", str(CAPACITY), "--queue-budget-s", "0.05", "--max-batch", "4")
    with LocalCluster([ChainSpec("tiny.en", enc_a=1, shard_args=args)], workdir=tmp_path) as cluster:
        stage0 = next(s for s in cluster.shards if s.role == "enc_a")
        dec = next(s for s in cluster.shards if s.role == "dec")
        rss_before = {s.role: _rss_mb(s.pid) for s in cluster.shards}

        async def one(i: int):
            options = AgentOptions(shards=(stage0.url,), language="en", max_reconnects=2, reconnect_max_s=0.2)
            try:
                # real time: admitted sessions stay open (~6 s) while the refused ones use up their retries;
                # streamed as fast as possible one could end first and free a place for a retry
                return await EdgeAgent(options).run(file_source(clips[i % len(clips)], realtime=True))
            except SessionRejectedError as exc:
                return exc

        async def main():
            return await asyncio.gather(*(one(i) for i in range(STREAMS)))

        outcomes = asyncio.run(main())
        rss_after = {s.role: _rss_mb(s.pid) for s in cluster.shards}
        dec_queue_max = _metric(dec.url, "splitasr_queue_length_max", '{stage="dec"}')
        rejected_metric = _metric(stage0.url, "splitasr_sessions_rejected_total")

    admitted = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, SessionRejectedError)]
    print(f"admitted {len(admitted)}, refused {len(refused)}, dec queue max {dec_queue_max}, rss {rss_after}")
    assert len(admitted) == CAPACITY and len(refused) == STREAMS - CAPACITY
    for report in admitted:
        utts = sorted(f.utt for f in report.finals)
        assert utts and utts == list(range(len(utts))), "every utterance of an admitted session got its FINAL"
        assert report.duplicate_finals == 0
    for exc in refused:
        assert exc.code == "overloaded" and exc.retry_after_ms and "try another shard" in str(exc)
    assert rejected_metric >= 2 * (STREAMS - CAPACITY)  # two attempts each
    assert dec_queue_max <= 256
    for role, before in rss_before.items():
        assert rss_after[role] - before < 300, f"{role} grew from {before:.0f} to {rss_after[role]:.0f} MB"
