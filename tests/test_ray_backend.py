"""The Ray backend on a multi-node Ray cluster on this machine: shards are actors placed by zone
label, edges of real speech keep every utterance when a node is removed under them.

``ray.cluster_utils.Cluster``: a head with no CPUs for tasks and three labelled nodes (zones a, a,
b), all on 127.0.0.1, object store capped, no dashboard, no usage stats. The coordinator is a real
``splitasr up --backend ray --address …`` process that joins the cluster as a driver.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from splitasr.edge.agent import AgentOptions, EdgeAgent
from splitasr.edge.audio_in import file_source
from tests.cluster import CoordinatorProcess, EdgeStreams, stream_base, wait_until

ray = pytest.importorskip("ray", reason="the Ray backend needs the ray extra (make install installs it)")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.integration

REAL = Path(__file__).resolve().parent.parent / "samples" / "real" / "en"
LONG = [
    REAL / "en_ljspeech_LJ001-0026_to_0030_concat.flac",  # 35 s
    REAL / "en_librivox_sonnet001_lines02-13.flac",  # 43 s
    REAL / "en_mfa_acoustic_corpus.flac",  # 27 s
]
NODE = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * 1024 * 1024, "include_dashboard": False}
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
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # inherited by every Ray process started here
    # Ray "resolves" a 127.0.0.1 bootstrap address to the machine's outward address; this keeps the
    # coordinator's driver (and everything else) on loopback
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # a lost node is declared dead after ~2 s of missed health checks (default ~15 s)
    health = {"health_check_period_ms": 500, "health_check_timeout_ms": 500, "health_check_failure_threshold": 4}
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "num_cpus": 0, "_system_config": health})
    try:  # logical CPUs: room for every shard on the two nodes left after one is removed
        nodes = {cluster.add_node(**NODE, num_cpus=4, labels={"zone": zone}): zone for zone in ZONES}
        cluster.wait_for_nodes()
        yield cluster, nodes
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def cluster(ray_nodes, tmp_path_factory, tiny_artifacts):
    ray_cluster, _ = ray_nodes
    with CoordinatorProcess(tmp_path_factory.mktemp("ray"), {**CONFIG, "ray_address": ray_cluster.address}) as c:
        yield c


def raylet_of(pid: int) -> int:
    """The pid of the raylet that started a Ray worker process (its parent)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def node_of(nodes: dict, pid: int):
    parent = raylet_of(pid)
    return next(n for n in nodes if n.all_processes["raylet"][0].process.pid == parent)


def test_shards_are_actors_placed_by_zone_label(cluster, ray_nodes):
    _, nodes = ray_nodes
    shards = wait_until(lambda: len(cluster.pool()["shards"]) == 6 and cluster.pool()["shards"], 60, "6 shards")
    for shard in shards:
        node = node_of(nodes, shard["pid"])  # a Ray worker of one of the labelled nodes
        assert nodes[node] == shard["zone"], (shard, nodes[node])
    assert sorted(s["zone"] for s in shards if s["stage"] == "enc_a") == ["a", "b"]


def test_node_removed_under_streams_loses_no_utterance(cluster, ray_nodes):
    ray_cluster, nodes = ray_nodes
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
        ray_cluster.remove_node(victim, allow_graceful=False)

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
            f"next FINAL of the {len(affected)} affected streams after {[round(s, 1) for s in next_final_s]} s"
        )
    finally:
        edges.close()
    for r in reports:  # every utterance has exactly one FINAL
        assert r.utterances >= 1 and sorted(f.utt for f in r.finals) == list(range(r.utterances))
        assert r.duplicate_finals == 0
    assert affected, "no stream was on the removed node"
