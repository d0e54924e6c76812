"""``splitasr simulate``: replay an arrival trace through the stage pools under several scaling policies."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from splitasr.cloud.simulate.engine import POLICIES, Options

    d = Options()
    p = sub.add_parser("simulate", help="replay an arrival trace (CSV) under scaling policies; compare them")
    p.add_argument("--trace", required=True, help="CSV with one row per session arrival")
    p.add_argument("--time-column", required=True, help="the column with the arrival time")
    p.add_argument(
        "--time-format", default=None, help="strptime format of date-times (e.g. '%%Y-%%m-%%d %%H:%%M:%%S.%%f')"
    )
    p.add_argument("--time-unit", default=None, help="unit of numeric times: s, ms, us, ns, min, h")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the load (arrivals) by this")
    p.add_argument("--speedup", type=float, default=1.0, help="compress time by this factor")
    p.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated, of {', '.join(POLICIES)}")
    p.add_argument("--slo-s", type=float, default=d.slo_s, help="end of speech -> FINAL within this counts as met")
    p.add_argument("--failure-rate-per-hour", type=float, default=0.0, help="replica failures per replica-hour")
    p.add_argument("--spot-share", type=float, default=0.0, help="share of replicas on spot capacity")
    p.add_argument("--spot-price", type=float, default=d.spot_price, help="spot price relative to on-demand")
    p.add_argument("--preempt-rate-per-hour", type=float, default=0.0, help="pre-emptions per spot replica-hour")
    p.add_argument("--cold-start-s", type=float, default=None, help="per replica (default: measured, 1 s)")
    p.add_argument("--target-sessions", type=float, default=d.target_sessions, help="per stage-0 replica, every policy")
    p.add_argument("--target-busy", type=float, default=d.target_busy, help="per later-stage replica, every policy")
    p.add_argument(
        "--hybrid",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another autoscaler setting for the hybrid (e.g. scale_in_stabilization_s=60); repeatable",
    )
    p.add_argument("--zones", default="", help="zones and their share of sessions, e.g. 'a=0.7,b=0.3'")
    p.add_argument("--cross-zone-s", type=float, default=d.cross_zone_s, help="on a FINAL served from another zone")
    p.add_argument("--hang-share", type=float, default=0.0, help="share of failures that are hangs, not crashes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="FILE", help="write the results here")
    p.add_argument("--plot", default=None, metavar="PNG", help="load, replicas and latency over time")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:
    from splitasr.cloud.simulate.engine import POLICIES, Load, Options, simulate
    from splitasr.cloud.simulate.service import ServiceModel
    from splitasr.cloud.simulate.trace import load_arrivals, transform
    from splitasr.cloud.simulate.workload import SessionModel
    from splitasr.shared.errors import ConfigError

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown:
        raise ConfigError(f"unknown policies {unknown}; policies are {', '.join(POLICIES)}")
    if not 0 <= args.spot_share <= 1:
        raise ConfigError(f"--spot-share must be in [0, 1], got {args.spot_share}")
    if min(args.failure_rate_per_hour, args.preempt_rate_per_hour, args.spot_price) < 0 or args.slo_s <= 0:
        raise ConfigError("rates and prices must be >= 0 and --slo-s > 0")
    started = time.perf_counter()
    arrivals = transform(
        load_arrivals(args.trace, args.time_column, args.time_format, args.time_unit),
        args.scale,
        args.speedup,
        args.seed,
    )
    profile = SessionModel.from_devset().profile(seed=args.seed)
    service = ServiceModel.calibrated(profile.speaking_share, args.cold_start_s)
    load = Load.of(arrivals, profile)
    options = Options(
        slo_s=args.slo_s,
        failure_rate_per_h=args.failure_rate_per_hour,
        spot_share=args.spot_share,
        spot_price=args.spot_price,
        preempt_rate_per_h=args.preempt_rate_per_hour,
        seed=args.seed,
        target_sessions=args.target_sessions,
        target_busy=args.target_busy,
        hybrid=parse_settings(args.hybrid, "--hybrid"),
        zones=parse_settings(args.zones.split(",") if args.zones else [], "--zones"),
        cross_zone_s=args.cross_zone_s,
        hang_share=args.hang_share,
    )
    results = {p: simulate(p, load, profile, service, options) for p in policies}
    wall = time.perf_counter() - started
    span_h = load.sessions.size / 3600
    print(
        f"{Path(args.trace).name}: {arrivals.size} sessions over {span_h:.2f} h (scale {args.scale:g}, "
        f"speedup {args.speedup:g}), peak {load.sessions.max():.0f} connected; simulated in {wall:.1f} s"
    )
    oracle = results.get("oracle", {}).get("replica_seconds")
    print(f"{'policy':8} {'SLO met':>9} {'p50 s':>7} {'p99 s':>8} {'replica-s':>11} {'x oracle':>9} {'cost':>9}")
    for name, r in results.items():
        ratio = f"{r['replica_seconds'] / oracle:.2f}" if oracle else "-"
        print(
            f"{name:8} {r['slo_attainment'] * 100:8.3f}% {r['p50_s']:7.2f} {r['p99_s']:8.2f} "
            f"{r['replica_seconds']:11.0f} {ratio:>9} {r['cost']:9.2f}"
        )
    if args.json:
        payload = {
            "trace": str(args.trace),
            "scale": args.scale,
            "speedup": args.speedup,
            "slo_s": args.slo_s,
            "sessions": int(arrivals.size),
            "seconds": int(load.sessions.size),
            "wall_s": round(wall, 2),
            "session_model": {
                "mean_session_s": round(profile.mean_session_s, 1),
                "speaking_share": round(profile.speaking_share, 3),
            },
            "service_model": {
                "busy_per_speaking_stream": service.busy_per_speaking,
                "cold_start_s": service.cold_start_s,
            },
            "policies": results,
        }
        Path(args.json).write_text(json.dumps(payload, indent=1))
    if args.plot:
        plot_timelines(args.plot, results)
    return 0


def parse_settings(pairs: list[str], flag: str) -> tuple[tuple[str, float], ...]:
    """``KEY=VALUE`` strings with numeric values, as ``Options.hybrid`` and ``.zones`` take them."""
    from splitasr.shared.errors import ConfigError

    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            out.append((key.strip(), float(value)))
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"{flag} takes KEY=NUMBER, got {pair!r}")
    return tuple(out)


def plot_timelines(path: str, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from splitasr.shared.control import STAGES

    fig, axes = plt.subplots(len(STAGES) + 1, 1, figsize=(9, 9), sharex=True)
    any_run = next(iter(results.values()))["timeline"]
    axes[0].plot([p["t"] / 60 for p in any_run], [p["sessions"] for p in any_run], color="black")
    axes[0].set_ylabel("sessions")
    for ax, stage in zip(axes[1:], STAGES, strict=True):
        for name, r in results.items():
            ax.plot([p["t"] / 60 for p in r["timeline"]], [p[f"replicas_{stage}"] for p in r["timeline"]], label=name)
        ax.set_ylabel(f"{stage} replicas")
    axes[1].legend(ncol=3, fontsize=8)
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
