"""Coordinator restarts: a SIGKILLed coordinator leaves its shards serving; a new one on the same
workdir adopts them (same ids and pids, no extra shards, the pinned pool size kept) and streams
route again; at the end no shard of either coordinator is left running. A shard that loses its
coordinator for good exits by itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request

from splitasr.cloud.coordinator.state import pid_alive
from splitasr.cloud.processes import ShardSpec, shard_command
from splitasr.shared.wer import WERTally
from tests.cluster import ADMIN_TOKEN, CoordinatorProcess, EdgeStreams, wait_until

CONFIG = {
    "decision_period_s": 1.0,
    "pools": [
        {
            "model": "tiny.en",
            "languages": ["en"],
            "int8": True,
            "autoscaler": {"min_replicas": 1, "max_replicas": 3, "warm_spares": 0, "predictive": False},
        }
    ],
}


def _scale(url: str, replicas) -> dict:
    body = json.dumps({"pool": "tiny.en", "replicas": replicas}).encode()
    request = urllib.request.Request(
        f"{url}/v1/scale", body, {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def _live(cluster: CoordinatorProcess, at_least: int) -> dict[str, int] | None:
    """shard id -> pid of the registered shards whose breaker is closed, once there are ``at_least``."""
    live = {s["shard_id"]: s["pid"] for s in cluster.pool()["shards"] if s["breaker"] == "closed"}
    return live if len(live) >= at_least else None


def test_a_restarted_coordinator_adopts_its_shards_and_leaves_no_orphans(tmp_path, tiny_artifacts, real_manifest):
    clip = next(e for e in real_manifest if e.language == "en" and e.duration_s and 4 < e.duration_s < 10)
    seen: set[int] = set()
    cluster = CoordinatorProcess(tmp_path, CONFIG)
    try:
        cluster.start()
        _scale(cluster.url, 2)  # pinned: two stage-0 replicas
        before = wait_until(lambda: _live(cluster, 4), 120, "dec, enc_b and 2 stage-0 shards")
        seen |= set(before.values())
        old_url = cluster.url
        cluster.kill()
        assert all(pid_alive(pid) for pid in before.values())  # the data plane runs on without it

        cluster.start()
        assert cluster.url == old_url  # the port the shards heartbeat to
        after = wait_until(lambda: _live(cluster, 4), 60, "the shards to register again")
        seen |= set(after.values())
        assert after == before  # adopted: the same shards, nothing started twice
        assert cluster.pool()["pinned"] == 2

        edges = EdgeStreams()
        try:
            report = edges.start(clip.file, cluster.url, device_id="after-restart").result(timeout=120)
        finally:
            edges.close()
        tally = WERTally()
        tally.add(clip.reference, " ".join(f.text for f in report.finals))
        assert len(report.finals) == report.utterances >= 1 and tally.wer < 0.35, (tally.wer, report.finals)
        seen |= {s["pid"] for s in cluster.pool()["shards"]}
    finally:
        cluster.stop()
    orphans = [pid for pid in seen if pid_alive(pid)]
    assert orphans == [], orphans


def test_a_shard_whose_coordinator_never_returns_exits(tmp_path, tiny_artifacts):
    ready, log_file = tmp_path / "ready.json", tmp_path / "shard.log"
    cmd = shard_command(ShardSpec("tiny.en", "dec", int8=True), ready, "http://127.0.0.1:9", "lonely-dec")
    cmd[cmd.index("--orphan-after-s") + 1] = "5"
    with open(log_file, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        assert proc.wait(timeout=90) == 0, log_file.read_text()[-2000:]
        assert "an orphan; exiting" in log_file.read_text()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
