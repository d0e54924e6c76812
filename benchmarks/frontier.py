"""Cost-matched comparison of the autoscaling policies: each policy's cost/attainment frontier.

`benchmarks/simulate.py` compares the policies at two shared sets of targets, where their costs
differ, so "better attainment at equal or lower cost" cannot be read off it. Here every policy runs
at a ladder of targets (busy per encoder-B/decoder replica 0.3 ... 1.0, and the same share of the
64-session limit per stage-0 replica), which traces its frontier: SLO attainment against
replica-seconds (× the hindsight oracle's). For the hybrid at the benchmarked SLO targets
(`simulate.SETTINGS["SLO targets"]`), each baseline is then asked two things on the same trace and
scale:

- its best attainment at a cost no higher than the hybrid's;
- the lowest cost at which it reaches the hybrid's attainment (none: it never does on the ladder).

Writes benchmarks/results/frontier.json and frontier.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import RESULTS, print_table, write_json  # noqa: E402
from simulate import AZURE_FORMAT, SETTINGS, TRACES  # noqa: E402

from splitasr.cloud.simulate.engine import Load, simulate  # noqa: E402
from splitasr.cloud.simulate.service import ServiceModel  # noqa: E402
from splitasr.cloud.simulate.trace import load_arrivals, transform  # noqa: E402
from splitasr.cloud.simulate.workload import SessionModel  # noqa: E402

LADDER = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # busy per replica; stage 0: this share of its session limit
BASELINES = ("hpa", "kpa", "ray")


def ladder_options(busy: float, session_limit: int):
    """The SLO-target options (the hybrid's own settings included) at another target level."""
    return dataclasses.replace(SETTINGS["SLO targets"], target_busy=busy, target_sessions=busy * session_limit)


def run_point(load, profile, service, oracle_replica_s: float, policy: str, options) -> dict:
    """One policy at one set of targets: its attainment and replica-seconds × the oracle's."""
    r = simulate(policy, load, profile, service, options)
    return {
        "target_busy": options.target_busy,
        "attainment": r["slo_attainment"],
        "x_oracle": round(r["replica_seconds"] / oracle_replica_s, 4),
        "p99_s": round(r["p99_s"], 3),
    }


def compare(point: dict, frontier: list[dict]) -> dict:
    """A baseline's ``frontier`` (points with ``x_oracle`` and ``attainment``) against the hybrid's ``point``."""
    cheaper = [f for f in frontier if f["x_oracle"] <= point["x_oracle"] + 1e-9]
    reaching = [f for f in frontier if f["attainment"] >= point["attainment"] - 1e-9]
    return {
        "best_attainment_at_no_more_cost": max((f["attainment"] for f in cheaper), default=None),
        "least_x_oracle_reaching_hybrid": min((f["x_oracle"] for f in reaching), default=None),
    }


FLOOR = 0.001  # % missed drawn for a run that missed none (a log axis has no zero)


def missed(point: dict) -> float:
    return max(FLOOR, 100 * (1 - point["attainment"]))


def plot(path: Path, runs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, (len(runs) + 1) // 2, figsize=(4.2 * ((len(runs) + 1) // 2), 7.5), squeeze=False)
    for ax, (key, run) in zip(axes.flat, runs.items(), strict=False):
        for name, points in run["frontiers"].items():
            xs = [p["x_oracle"] for p in points]
            ax.plot(xs, [missed(p) for p in points], marker="o", ms=3, label=name)
        star = run["hybrid_slo"]
        ax.scatter([star["x_oracle"]], [missed(star)], c="k", marker="*", s=80, zorder=3)
        ax.axhline(0.1, color="grey", lw=0.8, ls="--")  # the 99.9 % target
        ax.set_yscale("log")
        ax.set_ylim(FLOOR / 2, 100)
        ax.set_xlim(left=0.8)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("replica-seconds × oracle")
        ax.set_ylabel("FINALs over the SLO, % (log)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(
        f"cost against FINALs over the SLO, each policy over a ladder of targets (★ hybrid, SLO targets; {FLOOR}: none)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scales", default="1,10,100")
    args = parser.parse_args()
    profile = SessionModel.from_devset().profile()
    service = ServiceModel.calibrated(profile.speaking_share)
    out: dict = {"ladder": list(LADDER), "session_limit": service.max_sessions, "runs": {}}
    rows = []
    for trace in ("conv", "code"):
        arrivals = load_arrivals(TRACES / f"azure_llm_2023_{trace}.csv", "TIMESTAMP", time_format=AZURE_FORMAT)
        for scale in (float(x) for x in args.scales.split(",")):
            started = time.perf_counter()
            load = Load.of(transform(arrivals, scale), profile)
            oracle = simulate("oracle", load, profile, service, SETTINGS["SLO targets"])["replica_seconds"]

            point = partial(run_point, load, profile, service, oracle)
            ladder = [ladder_options(b, service.max_sessions) for b in LADDER]
            frontiers = {p: [point(p, options) for options in ladder] for p in (*BASELINES, "hybrid")}
            hybrid = point("hybrid", SETTINGS["SLO targets"])
            key = f"{trace} x{scale:g}"
            run = {"hybrid_slo": hybrid, "frontiers": frontiers}
            run["against"] = {b: compare(hybrid, frontiers[b]) for b in BASELINES}
            out["runs"][key] = run
            for b, c in run["against"].items():
                best, least = c["best_attainment_at_no_more_cost"], c["least_x_oracle_reaching_hybrid"]
                rows.append(
                    [
                        key,
                        f"{100 * hybrid['attainment']:.3f}% at {hybrid['x_oracle']:.2f}x",
                        b,
                        "-" if best is None else f"{100 * best:.3f}%",
                        "never" if least is None else f"{least:.2f}x",
                    ]
                )
            print(f"{key}: {time.perf_counter() - started:.1f} s", flush=True)
    print_table(
        ["trace", "hybrid (SLO targets)", "baseline", "its best SLO met at <= hybrid's cost", "its cost to match"],
        rows,
    )
    path = write_json("frontier", out)
    plot(RESULTS / "frontier.png", out["runs"])
    print(f"wrote {path} and {RESULTS / 'frontier.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
