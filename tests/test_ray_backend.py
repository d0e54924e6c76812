"""The Ray backend on a multi-node Ray cluster on this machine: shards are actors placed by zone
label, edges of real speech keep every utterance when a node is removed under them.

``ray.cluster_utils.Cluster``: a head with no CPUs for tasks and three labelled nodes (zones a, a,
b), all on 127.0.0.1, object store capped, no dashboard, no usage stats. The coordinator is a real
``splitasr up --backend ray --address …`` process that joins the cluster as a driver.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from splitasr.edge.agent import AgentOptions, EdgeAgent
from splitasr.edge.audio_in import file_source
from tests import ray_cluster
from tests.cluster import ADMIN_TOKEN, CoordinatorProcess, EdgeStreams, stream_base, wait_until
from tests.cluster import LONG_REAL as LONG
from tests.ray_cluster import node_of

pytest.importorskip("ray", reason="the Ray backend needs the ray extra (make install installs it)")

pytestmark = pytest.mark.integration

ZONES = ("a", "a", "b")

CONFIG = {
    "backend": "ray",
    "decision_period_s": 0.5,
    "pools": [
        {
            "model": "tiny.en",
            "zones": ["a", "b"],
            "autoscaler": {"min_replicas": 2, "max_replicas": 2, "warm_spares": 0, "predictive": False},
            "enc_b": 2,  # one per zone: losing a node leaves every stage a replica
            "dec": 2,
            "enc_b_autoscaler": {"max_replicas": 2},
            "dec_autoscaler": {"max_replicas": 2},
        }
    ],
}


@pytest.fixture(scope="module")
def ray_nodes():
    # 4 logical CPUs per node: room for every shard on the two nodes left after one is removed
    with ray_cluster.ray_nodes(ZONES, cpus_per_node=4) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def cluster(ray_nodes, tmp_path_factory, tiny_artifacts):
    cluster_, _ = ray_nodes
    with CoordinatorProcess(tmp_path_factory.mktemp("ray"), {**CONFIG, "ray_address": cluster_.address}) as c:
        yield c


def test_shards_are_actors_placed_by_zone_label(cluster, ray_nodes):
    _, nodes = ray_nodes
    shards = wait_until(lambda: len(cluster.pool()["shards"]) == 6 and cluster.pool()["shards"], 60, "6 shards")
    for shard in shards:
        node = node_of(nodes, shard["pid"])  # a Ray worker of one of the labelled nodes
        assert nodes[node] == shard["zone"], (shard, nodes[node])
    assert sorted(s["zone"] for s in shards if s["stage"] == "enc_a") == ["a", "b"]


def splitasr(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPLITASR_ADMIN_TOKEN": ADMIN_TOKEN}
    cmd = [sys.executable, "-m", "splitasr.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)


def answers(url: str) -> int | None:
    """HTTP status of GET ``url`` as admin; None when nothing listens there."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError):
        return None


def test_detached_coordinator_outlives_up_and_stops_with_down(ray_nodes, tmp_path, tiny_artifacts):
    """`up --backend ray --detached` returns once the coordinator actor has its pool up; the
    coordinator keeps serving after the command exited; `down` stops it and its shards."""
    cluster_, _ = ray_nodes
    namespace = "splitasr-detached-test"  # zone a: two nodes, room next to the module's cluster
    pool = {"model": "tiny.en", "zones": ["a"], "autoscaler": {"min_replicas": 1, "max_replicas": 1, "warm_spares": 0}}
    config = {"backend": "ray", "port": 0, "ray_namespace": namespace, "decision_period_s": 0.5}
    (tmp_path / "cluster.yaml").write_text(json.dumps({**config, "pools": [{**pool, "enc_b": 1, "dec": 1}]}))
    ready = tmp_path / "ready.json"
    address = cluster_.address
    up = splitasr("up", "--config", str(tmp_path / "cluster.yaml"), "--address", address, "--detached",
                  "--ready-file", str(ready))  # fmt: skip
    assert up.returncode == 0, up.stderr[-3000:]
    url = json.loads(ready.read_text())["url"]
    try:
        assert answers(url + "/readyz") == 200
        pools = wait_until(lambda: len(shards_of(url)) == 3 and shards_of(url), 60, "3 shards of the detached pool")
        pids = [s["pid"] for s in pools]
        assert sorted(s["stage"] for s in pools) == ["dec", "enc_a", "enc_b"]
    finally:
        down = splitasr("down", "--address", address, "--namespace", namespace, timeout_s=180)
    assert down.returncode == 0, down.stderr[-3000:]
    assert answers(url + "/healthz") is None  # the coordinator is gone ...
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 30, "its shards to exit")
    again = splitasr("down", "--address", address, "--namespace", namespace)
    assert again.returncode == 1 and "no detached coordinator" in again.stdout
    assert splitasr("up", "--backend", "ray", "--detached").returncode == 2  # no cluster to outlive the command


def shards_of(url: str) -> list[dict]:
    request = urllib.request.Request(url + "/v1/pools", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return [s for p in json.loads(resp.read())["pools"] for s in p["shards"]]


def test_node_removed_under_streams_loses_no_utterance(cluster, ray_nodes):
    cluster_, nodes = ray_nodes
    edges = EdgeStreams()
    finals_at: dict[str, list[float]] = {}
    try:
        futures, agents = [], []
        for i in range(4):
            device = f"ray-{i}"
            finals_at[device] = []
            options = AgentOptions(coordinator=cluster.url, zone="ab"[i % 2], device_id=device, language="en")
            agent = EdgeAgent(options, on_final=lambda _f, d=device: finals_at[d].append(time.time()))
            agents.append(agent)
            source = file_source(LONG[i % len(LONG)], realtime=True)
            futures.append(asyncio.run_coroutine_threadsafe(agent.run(source), edges.loop))
        wait_until(lambda: all(a.report.shards for a in agents), 60, "every edge to have a session")
        # zone-a edges land on the zone-a stage-0 shard while it has room
        zone_of = {stream_base(s["url"]): s["zone"] for s in cluster.stage0()}
        assert [zone_of[stream_base(a.report.shards[0])] for a in agents] == ["a", "b", "a", "b"]
        wait_until(lambda: all(finals_at.values()), 60, "a first FINAL on every stream")
        before = {s["shard_id"]: s for s in cluster.pool()["shards"]}
        victim_shard = next(s for s in before.values() if s["stage"] == "enc_a" and s["zone"] == "a")
        victim = node_of(nodes, victim_shard["pid"])
        on_victim = {sid for sid, s in before.items() if node_of(nodes, s["pid"]) is victim}
        removed_at = time.time()
        cluster_.remove_node(victim, allow_graceful=False)

        def restarted():
            now = {s["shard_id"]: s for s in cluster.pool()["shards"] if s["breaker"] != "open"}
            return all(sid in now and now[sid]["pid"] != before[sid]["pid"] for sid in on_victim) and now

        after = wait_until(restarted, 120, "the lost shards to restart on the remaining nodes")
        restart_s = time.time() - removed_at
        remaining = [n for n in nodes if n is not victim]
        for sid in on_victim:
            assert node_of({n: nodes[n] for n in remaining}, after[sid]["pid"]) in remaining
        reports = [f.result(timeout=240) for f in futures]
        affected = [a.o.device_id for a in agents if a.report.reconnects]
        next_final_s = [min(t for t in finals_at[d] if t > removed_at) - removed_at for d in affected]
        print(
            f"removed node with {sorted(on_victim)}; restarted in {restart_s:.1f} s; "
            f"next FINAL of the {len(affected)} affected streams after {[round(s, 1) for s in next_final_s]} s; "
            f"utterances {sum(r.utterances for r in reports)}, FINALs {sum(len(r.finals) for r in reports)}, "
            f"duplicates {sum(r.duplicate_finals for r in reports)}"
        )
    finally:
        edges.close()
    for r in reports:  # every utterance has exactly one FINAL
        assert r.utterances >= 1 and sorted(f.utt for f in r.finals) == list(range(r.utterances))
        assert r.duplicate_finals == 0
    assert affected, "no stream was on the removed node"
