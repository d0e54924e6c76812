"""QoS classes and spot capacity on a real cluster: batch-class sessions run on the pool's spot
replica (a whole chain in one process), interactive ones never do; a spot replica pre-empted
(SIGKILL) under batch work loses nothing: its sessions replay elsewhere, every utterance gets
exactly one FINAL, and the coordinator starts a replacement. Cost per audio hour from the pool's
replica-seconds. Real speech, real time.
"""

from __future__ import annotations

import os
import signal

import pytest
import soundfile as sf

from tests.cluster import FIXED_ONE, LONG_REAL, CoordinatorProcess, stream_base, wait_until

pytestmark = pytest.mark.integration

FIXED = FIXED_ONE
CONFIG = {
    "decision_period_s": 0.5,
    "pools": [
        {
            "model": "tiny.en",
            "zones": ["a"],
            "autoscaler": FIXED,
            "price_per_hour": 1.0,
            "spot": {"replicas": 1, "price_per_hour": 0.3},
        }
    ],
}


def spot_shards(cluster) -> list[dict]:
    return [s for s in cluster.pool()["shards"] if s["config_version"] == "spot" and s["breaker"] != "open"]


def test_batch_work_runs_on_spot_and_survives_its_preemption(tmp_path, tiny_artifacts, edges):
    with CoordinatorProcess(tmp_path, CONFIG) as cluster:
        spot = wait_until(lambda: spot_shards(cluster), 60, "the spot replica")[0]
        assert spot["stage"] == "enc_a" and {s["config_version"] for s in cluster.pool()["shards"]} == {
            "default",
            "spot",
        }
        clips = [LONG_REAL[i % len(LONG_REAL)] for i in range(5)]
        batch = [edges.start(c, cluster.url, device_id=f"batch-{i}", qos="batch") for i, c in enumerate(clips[:3])]
        interactive = [edges.start(c, cluster.url, device_id=f"live-{i}") for i, c in enumerate(clips[3:])]
        agents = edges.agents
        wait_until(lambda: all(a.report.shards for a in agents), 30, "every session to be admitted")
        first = [stream_base(a.report.shards[0]) for a in agents]
        assert first[:3] == [stream_base(spot["url"])] * 3, first  # batch: on spot
        assert stream_base(spot["url"]) not in first[3:], first  # interactive: never
        # pre-empt the spot replica once every batch session has been answered at least once
        wait_until(lambda: all(a.report.finals for a in agents[:3]), 90, "a FINAL on each batch session")
        os.kill(spot["pid"], signal.SIGKILL)
        reports = [f.result(timeout=240) for f in batch + interactive]
        for r in reports:
            assert sorted(f.utt for f in r.finals) == list(range(r.utterances)), "an utterance lost or answered twice"
            assert r.duplicate_finals == 0 and r.utterances >= 2
        assert all(r.reconnects >= 1 for r in reports[:3]) and all(r.reconnects == 0 for r in reports[3:])
        replacement = wait_until(
            lambda: [s for s in spot_shards(cluster) if s["pid"] != spot["pid"]], 60, "a new spot replica process"
        )
        cost = cluster.pool()["cost"]
    audio_h = sum(sf.info(str(c)).duration for c in clips) / 3600
    seconds = cost["replica_s"]
    assert seconds["on_demand"] > 0 and seconds["spot"] > 0
    assert cost["cost"] == pytest.approx(seconds["on_demand"] / 3600 * 1.0 + seconds["spot"] / 3600 * 0.3, rel=0.01)
    print(
        f"\nspot: 3 batch sessions on spot, 2 interactive on on-demand; spot replica SIGKILLed after each batch "
        f"session's first FINAL; {sum(r.utterances for r in reports)} utterances, "
        f"{sum(len(r.finals) for r in reports)} FINALs, batch reconnects {[r.reconnects for r in reports[:3]]}; "
        f"replacement {replacement[0]['shard_id']}. Replica-seconds {seconds}, cost {cost['cost']:.4f} for "
        f"{audio_h * 3600:.0f} s of audio: {cost['cost'] / audio_h:.2f} per audio hour (on-demand 1.0, spot 0.3 "
        f"per replica-hour)"
    )
