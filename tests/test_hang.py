"""Hung shards (SIGSTOP): real-time streams of real speech keep every utterance, exactly once, and
work stuck on the hung shard moves on within seconds, not after the hang or a 30 s timeout.

A stopped process still completes TCP handshakes from its kernel backlog and keeps its sockets
open, so only deadlines find it: websocket heartbeats (a peer silent for 1.5 x HEARTBEAT_S is
dropped) and handshake timeouts (protocol.HANDSHAKE_TIMEOUT_S).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from splitasr.cloud.local_cluster import ChainSpec, LocalCluster
from splitasr.edge.agent import AgentOptions, EdgeAgent, FinalResult
from splitasr.edge.audio_in import file_source
from splitasr.shared import protocol as p
from splitasr.shared.longform import build_streams

HOLD_S = 8.0  # each hang lasts this long; without hang detection FINALs behind it wait at least as long


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_artifacts):
    spec = ChainSpec("tiny.en", enc_a=2, enc_b=2, dec=2, int8=True)
    with LocalCluster([spec], workdir=tmp_path_factory.mktemp("hang")) as cluster:
        yield cluster


def test_hung_shards_lose_nothing_and_stall_nobody_for_long(chain, tmp_path):
    streams = build_streams(tmp_path, count=4, per_stream=5, min_clip_s=1.0)
    shards = {s["role"]: [x for x in chain.describe() if x["role"] == s["role"]] for s in chain.describe()}
    faults = [(5.0, shards["dec"][0]), (17.0, shards["enc_a"][0]), (29.0, shards["enc_b"][0])]
    urls = chain.stage0_urls("tiny.en")
    arrivals: list[tuple[int, float]] = []  # (stream, monotonic time) of each FINAL
    stopped_at: dict[int, float] = {}

    async def one(i: int):
        def on_final(result: FinalResult) -> None:
            arrivals.append((i, time.monotonic()))

        options = AgentOptions(shards=tuple(urls[i % 2 :] + urls[: i % 2]), device_id=f"hang-{i}", language="en")
        agent = EdgeAgent(options, on_final=on_final)
        return await agent.run(file_source(streams[i].path, realtime=True))

    async def hang(at_s: float, shard: dict) -> None:
        await asyncio.sleep(at_s)  # the fault schedule, not a synchronisation
        os.kill(shard["pid"], signal.SIGSTOP)
        stopped_at[shard["pid"]] = time.monotonic()
        try:
            await asyncio.sleep(HOLD_S)
        finally:
            os.kill(shard["pid"], signal.SIGCONT)

    async def main():
        faulting = [asyncio.create_task(hang(at, shard)) for at, shard in faults]
        try:
            return await asyncio.gather(*(one(i) for i in range(len(streams))))
        finally:
            for task in faulting:
                task.cancel()
            await asyncio.gather(*faulting, return_exceptions=True)
            for _, shard in faults:
                os.kill(shard["pid"], signal.SIGCONT)

    reports = asyncio.run(main())
    for s, report in zip(streams, reports, strict=True):
        assert report.duplicate_finals == 0
        assert len(report.finals) == report.utterances  # run() returns only once each has its FINAL
        assert len({f.utt for f in report.finals}) == report.utterances
        assert abs(report.utterances - s.expected_finals()) <= 1, (report.utterances, s.expected_finals())
    eou = sorted(f.eou_latency_s for r in reports for f in r.finals)
    assert len(stopped_at) == len(faults)  # every fault happened while the streams ran
    # a FINAL stuck behind a hung shard waits for detection (1.5 heartbeats) and a retry, not the hang
    limit = 1.5 * p.HEARTBEAT_S + 3.0
    assert eou[-1] < min(limit, HOLD_S), eou
    reconnects = sum(r.reconnects for r in reports)
    assert reconnects >= 1  # the streams on the hung stage 0 moved
    print(
        f"\n{sum(len(r.finals) for r in reports)} FINALs for {sum(r.utterances for r in reports)} utterances, "
        f"0 duplicates, {reconnects} reconnects; EOU->FINAL p50 {eou[len(eou) // 2]:.2f} s, max {eou[-1]:.2f} s "
        f"with {len(faults)} hangs of {HOLD_S:g} s"
    )
