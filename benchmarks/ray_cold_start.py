"""Cold start of a shard: a Ray actor on a warm node against a local process, same run.

Start → ready (the shard's ready file: stages loaded and warmed up, listening) of tiny.en int8
shards of each stage, through the coordinator's two backends: ``RayBackend`` on a two-node Ray
cluster on this machine (head with no CPUs + one worker node) and ``LocalProcessBackend``. The node
is warmed first (one shard started and stopped per backend, so Ray's worker pool, the page cache
and the exported stages are warm); then the backends alternate for ``--rounds`` rounds. Writes
benchmarks/results/ray_cold_start.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep Ray on loopback (read when ray is imported)
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import RESULTS, median, print_table, write_json  # noqa: E402

from splitasr.cloud.coordinator.backend import LocalProcessBackend  # noqa: E402
from splitasr.cloud.processes import ShardSpec  # noqa: E402
from tests.ray_cluster import ray_nodes  # noqa: E402

STAGES = ("enc_a", "enc_b", "dec")


async def chain(backend) -> dict[str, float]:
    """Start a decoder, an encoder B feeding it and an encoder A feeding that, one after the other
    (a stage needs its next stage's URL), then stop them; start → ready of each."""
    handles, next_urls = [], ()
    try:
        for stage in reversed(STAGES):
            handle = await backend.start(ShardSpec("tiny.en", stage, int8=True, next_urls=next_urls))
            handles.append(handle)
            next_urls = (handle.url,)
    finally:
        for handle in handles:
            await backend.stop(handle.shard_id)
    return {h.spec.stage: h.cold_start_s for h in handles}


async def measure(address: str, rounds: int) -> dict[str, dict[str, list[float]]]:
    from splitasr.cloud.coordinator.ray_backend import RayBackend

    backends = {"ray actor": RayBackend("", address=address), "local process": LocalProcessBackend(None)}
    times: dict[str, dict[str, list[float]]] = {name: {s: [] for s in STAGES} for name in backends}
    try:
        for backend in backends.values():  # warm-up, not counted
            await chain(backend)
        for r in range(rounds):
            order = list(backends.items()) if r % 2 == 0 else list(reversed(backends.items()))
            for name, backend in order:
                for stage, seconds in (await chain(backend)).items():
                    times[name][stage].append(seconds)
    finally:
        for backend in backends.values():
            await backend.close()
        backends["ray actor"].ray.shutdown()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from splitasr.models.stages import ensure_stages

    ensure_stages("tiny.en", int8=True, show_progress=False)
    with ray_nodes(("a",)) as (cluster, _):
        times = asyncio.run(measure(cluster.address, args.rounds))
    rows = []
    for stage in STAGES:
        ray_s, local_s = median(times["ray actor"][stage]), median(times["local process"][stage])
        rows.append([stage, ray_s, local_s, ray_s / local_s])
    print_table(["stage", "ray actor s (median)", "local process s (median)", "ratio"], rows)
    write_json("ray_cold_start", {"rounds": args.rounds, "model": "tiny.en int8", "start_to_ready_s": times})
    plot(times)


def plot(times: dict[str, dict[str, list[float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for i, (name, by_stage) in enumerate(times.items()):
        xs = [k + (i - 0.5) * width for k in range(len(STAGES))]
        bars = ax.bar(xs, [median(by_stage[s]) for s in STAGES], width, label=name)
        ax.bar_label(bars, fmt="%.2f")
    ax.set_xticks(range(len(STAGES)), STAGES)
    ax.set_ylabel("start → ready, s (median)")
    ax.set_title("Shard cold start: Ray actor on a warm node vs local process (tiny.en int8)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "ray_cold_start.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
