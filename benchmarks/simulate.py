"""The autoscaling simulator on the two shipped traces at --scale 1, 10, 100 (and one hour at 1000,
timed): every policy's SLO attainment, latency, replica-seconds and cost against the hindsight
oracle, at two sets of targets shared by every policy: the defaults (0.6 busy, 40 sessions per
stage-0 replica) and targets near what the SLO allows (0.9 busy, 60 of 64 sessions; the hybrid also
holds scale-in 20 s unless demand clearly falls, averages 12 s, lets queues reach 0.5 s, keeps room
for a burst like the largest of the last 30 s and no warm spare). Writes
benchmarks/results/simulate.json + simulate.png (replicas over time, conv trace, scale 10).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import RESULTS, machine, print_table, write_json  # noqa: E402

from splitasr.cli.simulate import plot_timelines  # noqa: E402
from splitasr.cloud.simulate.engine import POLICIES, Load, Options, simulate  # noqa: E402
from splitasr.cloud.simulate.service import ServiceModel  # noqa: E402
from splitasr.cloud.simulate.trace import load_arrivals, transform  # noqa: E402
from splitasr.cloud.simulate.workload import SessionModel  # noqa: E402

TRACES = Path(__file__).resolve().parent.parent / "samples" / "traces"
AZURE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
SETTINGS = {
    "default targets": Options(),
    "SLO targets": Options(
        target_busy=0.9,
        target_sessions=60.0,
        hybrid=(
            ("scale_in_stabilization_s", 20.0),
            ("stable_window_s", 12.0),
            ("target_queue_delay_s", 0.5),
            ("scale_in_on_decline", 1.0),
            ("decline_window_s", 30.0),
            ("burst_headroom", 1.0),
            ("burst_window_s", 30.0),
            ("warm_spares", 0.0),
        ),
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scales", default="1,10,100")
    parser.add_argument("--timed-scale", type=float, default=1000.0, help="one hour of the conv trace, timed")
    parser.add_argument(
        "--holdout-seeds", default="1,2,3", help="seeds the settings were not chosen on (code trace, SLO targets)"
    )
    args = parser.parse_args()
    profile = SessionModel.from_devset().profile()
    service = ServiceModel.calibrated(profile.speaking_share)
    options = SETTINGS["default targets"]
    out: dict = {"machine": machine(), "slo_s": options.slo_s, "settings": {}, "runs": {}}
    rows = []
    for setting, options in SETTINGS.items():
        out["settings"][setting] = {
            "target_busy": options.target_busy,
            "target_sessions": options.target_sessions,
            "hybrid": dict(options.hybrid),
        }
    # each trace read once: the runs, the held-out seeds (code) and the timed hour (conv) share it
    traces = {
        trace: load_arrivals(TRACES / trace, "TIMESTAMP", time_format=AZURE_FORMAT)
        for trace in ("azure_llm_2023_conv.csv", "azure_llm_2023_code.csv")
    }
    scales = [float(x) for x in args.scales.split(",")]
    for trace, arrivals in traces.items():
        for scale, (setting, options) in itertools.product(scales, SETTINGS.items()):
            load = Load.of(transform(arrivals, scale), profile)
            started = time.perf_counter()
            results = {p: simulate(p, load, profile, service, options) for p in POLICIES}
            wall = time.perf_counter() - started
            key = f"{trace.split('_')[-1].removesuffix('.csv')} x{scale:g}, {setting}"
            out["runs"][key] = {"setting": setting, "wall_s": round(wall, 1), "policies": results}
            oracle = results["oracle"]["replica_seconds"]
            for name, r in results.items():
                rows.append(
                    [
                        key,
                        name,
                        f"{r['slo_attainment'] * 100:.3f}%",
                        f"{r['p50_s']:.2f}",
                        f"{r['p99_s']:.2f}",
                        f"{r['replica_seconds'] / oracle:.2f}",
                        f"{r['cost']:.1f}",
                    ]
                )
            if trace.endswith("conv.csv") and scale == 10 and setting == "default targets":
                plot_timelines(str(RESULTS / "simulate.png"), results)
            print(f"{key}: {wall:.1f} s", flush=True)
    print_table(["trace", "policy", "SLO met", "p50 s", "p99 s", "x oracle replica-s", "cost"], rows)
    if args.holdout_seeds:
        seeds = [int(x) for x in args.holdout_seeds.split(",")]
        out["holdout"] = holdout(traces["azure_llm_2023_code.csv"], scales, seeds)
    if args.timed_scale:
        started = time.perf_counter()
        load = Load.of(transform(traces["azure_llm_2023_conv.csv"], args.timed_scale), profile)
        timed = {p: simulate(p, load, profile, service, SETTINGS["default targets"]) for p in POLICIES}
        wall = time.perf_counter() - started
        peak = max(
            sum(max(pt[f"replicas_{s}"] for pt in r["timeline"]) for s in ("enc_a", "enc_b", "dec"))
            for r in timed.values()
        )
        out["timed"] = {"scale": args.timed_scale, "wall_s": round(wall, 1), "peak_replicas": peak}
        print(f"conv x{args.timed_scale:g} (one hour, every policy): {wall:.1f} s, peak {peak} replicas")
    for run in out["runs"].values():  # timelines make the file large; the plot keeps one
        for r in run["policies"].values():
            r.pop("timeline")
    path = write_json("simulate", out)
    print(f"wrote {path} and {RESULTS / 'simulate.png'}")
    return 0


def holdout(arrivals: np.ndarray, scales: list[float], seeds: list[int]) -> dict:
    """The hybrid at SLO targets on the code trace with other seeds (another draw of the session
    profile and of the scaled copies' times, as ``splitasr simulate --seed``): attainment and
    replica-seconds x the oracle's."""
    out, rows = {}, []
    for seed in seeds:  # the profile, service model and options depend on the seed only
        profile = SessionModel.from_devset().profile(seed=seed)
        service = ServiceModel.calibrated(profile.speaking_share)
        options = dataclasses.replace(SETTINGS["SLO targets"], seed=seed)
        for scale in scales:
            load = Load.of(transform(arrivals, scale, seed=seed), profile)
            hybrid, oracle = (simulate(p, load, profile, service, options) for p in ("hybrid", "oracle"))
            key = f"code x{scale:g}, seed {seed}"
            out[key] = {
                "slo_attainment": hybrid["slo_attainment"],
                "x_oracle": round(hybrid["replica_seconds"] / oracle["replica_seconds"], 4),
            }
            rows.append([key, f"{out[key]['slo_attainment'] * 100:.3f}%", f"{out[key]['x_oracle']:.3f}"])
    print_table(["held out", "hybrid SLO met", "x oracle replica-s"], rows)
    return out


if __name__ == "__main__":
    sys.exit(main())
