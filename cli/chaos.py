"""``splitasr chaos``: kill and hang shards of a local cluster under real-time real speech; report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from splitasr.cloud.chaos import ChaosOptions

    d = ChaosOptions()
    p = sub.add_parser("chaos", help="kill and hang shards under real-time streams of real speech; report")
    p.add_argument("--duration", type=float, default=d.duration_s, help="seconds each run's streams play")
    p.add_argument("--streams", type=int, default=d.streams, help="concurrent real-time streams")
    p.add_argument("--kill-every-s", type=float, default=d.kill_every_s, help="SIGKILL a random shard this often")
    p.add_argument("--hang-s", type=float, default=d.hang_s, help="SIGSTOP one shard this long (0: none)")
    p.add_argument("--no-baseline", action="store_true", help="skip the no-fault run of the same streams")
    p.add_argument("--no-coordinator-restart", action="store_true", help="do not kill and restart the coordinator")
    p.add_argument(
        "--network-every-s",
        type=float,
        default=d.network_every_s,
        help="a third run through fault-injecting proxies: reset, stall or delay a link this often (0: no run)",
    )
    p.add_argument(
        "--live-edges",
        action="store_true",
        help="run every edge's VAD and log-mel on this machine during the runs (default: once, before them; "
        "the runs replay the frames in real time, as devices would send them)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--report", default=None, metavar="FILE", help="write the report here (JSON)")
    p.add_argument("--workdir", default=None, help="streams, coordinator and shard logs (default: a temp dir)")
    p.set_defaults(func=cmd_chaos)


def _row(name: str, run: dict) -> str:
    eou = run["eou_to_final_s"]
    return (
        f"{name:9} {run['utterances']:5} {run['finals']:6} {run['duplicates']:5} {run['lost']:5} "
        f"{run['wer'] * 100:6.1f}% {run['reconnects']:6}   {eou['p50']} / {eou['p99']} / {eou['max']}"
    )


def cmd_chaos(args: argparse.Namespace) -> int:
    from splitasr.cloud.chaos import ChaosOptions, Injector, NetworkInjector, run_chaos

    options = ChaosOptions(
        duration_s=args.duration,
        streams=args.streams,
        kill_every_s=args.kill_every_s,
        hang_s=args.hang_s,
        baseline=not args.no_baseline,
        coordinator_restart=not args.no_coordinator_restart,
        network_every_s=args.network_every_s,
        live_edges=args.live_edges,
        seed=args.seed,
    )
    print(f"chaos: {options.streams} real-time streams, ~{options.duration_s:g} s per run …", file=sys.stderr)
    report = run_chaos(options, Path(args.workdir) if args.workdir else None)
    print("run       utts  finals  dups  lost     WER  recon   EOU->FINAL p50 / p99 / max (s)")
    for name in ("baseline", "chaos", "network"):
        if name in report:
            print(_row(name, report[name]))
    faulted = [report[name] for name in ("chaos", "network") if name in report]
    for run in faulted:
        for kind in Injector.KINDS + NetworkInjector.KINDS:
            gap, added = run.get(f"{kind}_to_next_final_s"), run.get(f"{kind}_added_s")
            if gap:
                print(
                    f"{kind}: {sum(f['kind'] == kind for f in run['faults'])} faults, "
                    f"{gap['charged']} utterances charged; fault (or EOU) -> FINAL "
                    f"p50 {gap['p50']} s, p99 {gap['p99']} s, max {gap['max']} s"
                    + (f"; added to EOU -> FINAL p50 {added['p50']} s, p99 {added['p99']} s" if added else "")
                )
    print(f"shard restarts by the backend: {report['restarts']}; orphans at the end: {len(report['orphans'])}")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.report}", file=sys.stderr)
    intact = all(run["lost"] == 0 and run["duplicates"] == 0 for run in faulted)
    return 0 if intact and not report["orphans"] else 1
