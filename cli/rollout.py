"""``splitasr rollout start|status|abort|promote``: canary rollouts of a pool version (rollouts.py)."""

from __future__ import annotations

import argparse
import json
import os

from splitasr.cli.admin import _common, _token, call, parse_assignments
from splitasr.cloud.coordinator.rollout import DEFAULT_STEPS, parse_interval, parse_steps


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rollout", help="canary rollouts: start, status, abort, promote")
    actions = p.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", help="send a growing share of new sessions to VERSION, with guards")
    _common(start)
    start.add_argument("pool")
    start.add_argument("--to", required=True, metavar="VERSION", help="a version in the pool's `versions:`")
    start.add_argument(
        "--steps", default=",".join(map(str, DEFAULT_STEPS)), help="canary shares in percent (default 5,25,50,100)"
    )
    start.add_argument("--interval", default="60s", help="time per step: 60, 60s, 2m (default 60s)")
    start.add_argument(
        "--guard",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a guard, e.g. p99_ratio=2 or min_finals=5 (see docs/rollouts.md)",
    )
    start.set_defaults(func=cmd_start)
    for name, doc in (("abort", "roll the canary back now"), ("promote", "make the canary the stable version now")):
        q = actions.add_parser(name, help=doc)
        _common(q)
        q.add_argument("pool")
        q.set_defaults(func=cmd_act)
    q = actions.add_parser("status", help="each pool's rollout and the decision log")
    _common(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_status)


def cmd_start(args: argparse.Namespace) -> int:
    body = {
        "pool": args.pool,
        "action": "start",
        "to": args.to,
        "steps": list(parse_steps(args.steps)),
        "interval_s": parse_interval(args.interval),
        "guards": parse_assignments(args.guard),
    }
    r = call(args.coordinator, "/v1/rollout", body, _token(args))["rollout"]
    steps = ",".join(map(str, r["steps"]))
    print(f"pool {r['pool']}: rolling out {r['stable']} -> {r['canary']}, steps {steps} %, every {r['interval_s']} s")
    return 0


def cmd_act(args: argparse.Namespace) -> int:
    r = call(args.coordinator, "/v1/rollout", {"pool": args.pool, "action": args.action}, _token(args))["rollout"]
    print(f"pool {r['pool']}: rollout to {r['canary']} {r['status']} ({r['reason']})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = call(args.coordinator, "/v1/rollouts", token=args.token or os.environ.get("SPLITASR_ADMIN_TOKEN"))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    for model, version in status["stable"].items():
        print(f"pool {model}: stable version {version}")
    for r in status["rollouts"]:
        at = f"step {r['step'] + 1}/{len(r['steps'])}, canary share {r['share']:.0%}"
        print(f"  rollout {r['stable']} -> {r['canary']}: {r['status']} ({at}) {r['reason']}")
    for e in status["log"][-20:]:
        print(f"  {e['time']:.0f} {e['pool']} {e['event']}: {e['detail']}")
    return 0
