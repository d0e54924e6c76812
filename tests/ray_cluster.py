"""A multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``), for tests and benchmarks.

A head that runs no tasks (0 CPUs) and one node per zone label, everything on 127.0.0.1, object
stores capped, no dashboard, no usage report; a lost node is declared dead after about 2 s of
missed health checks (Ray's default is about 15 s).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

NODE = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * 1024 * 1024, "include_dashboard": False}
HEALTH = {"health_check_period_ms": 500, "health_check_timeout_ms": 500, "health_check_failure_threshold": 4}


@contextlib.contextmanager
def ray_nodes(zones: tuple[str, ...], cpus_per_node: int = 4) -> Iterator[tuple[object, dict]]:
    """(cluster, {node: zone}); ``cpus_per_node`` are logical CPUs (Ray's accounting, not cores)."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # inherited by every Ray process started here
    # Ray "resolves" a 127.0.0.1 bootstrap address to the machine's outward address; this keeps
    # every driver (benchmark, coordinator) on loopback
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "num_cpus": 0, "_system_config": HEALTH})
    try:
        nodes = {cluster.add_node(**NODE, num_cpus=cpus_per_node, labels={"zone": z}): z for z in zones}
        cluster.wait_for_nodes()
        yield cluster, nodes
    finally:
        cluster.shutdown()


def node_of(nodes: dict, pid: int):
    """The node (of ``nodes``) whose raylet started the Ray worker process ``pid`` (its parent)."""
    with open(f"/proc/{pid}/stat") as f:
        parent = int(f.read().rsplit(")", 1)[1].split()[1])
    return next(n for n in nodes if n.all_processes["raylet"][0].process.pid == parent)
