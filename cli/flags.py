"""``splitasr flags set|list|clear``: feature flags pushed to a pool's shards at run time (shared/flags.py)."""

from __future__ import annotations

import argparse
import json
import os

from splitasr.cli.admin import _common, _token, call, parse_assignments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flags", help="feature flags of a pool, changed at run time without restarts")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("set", help="add a rule: flags for a pool, for all or a share of its devices")
    _common(q)
    q.add_argument("pool")
    q.add_argument(
        "values", nargs="+", metavar="FLAG=VALUE", help="partials=false, partial_interval_s=0.8, max_batch=8"
    )
    q.add_argument("--share", type=float, default=1.0, help="share of devices (by device id hash; default 1)")
    q.set_defaults(func=cmd_set)
    q = actions.add_parser("clear", help="drop every rule of a pool (its shards go back to their settings)")
    _common(q)
    q.add_argument("pool")
    q.set_defaults(func=cmd_clear)
    q = actions.add_parser("list", help="the rules and the change log")
    _common(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_list)


def cmd_set(args: argparse.Namespace) -> int:
    body = {"pool": args.pool, "share": args.share, "set": parse_assignments(args.values, "flags", "FLAG")}
    answer = call(args.coordinator, "/v1/flags", body, _token(args))
    rule, values = answer["rule"], body["set"]
    print(f"pool {rule['pool']}: {values} for {rule['share']:.0%} of devices (version {answer['version']})")
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    answer = call(args.coordinator, "/v1/flags", {"pool": args.pool, "clear": True}, _token(args))
    print(f"pool {args.pool}: {answer['cleared']} rules cleared (version {answer['version']})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    status = call(args.coordinator, "/v1/flags", token=args.token or os.environ.get("SPLITASR_ADMIN_TOKEN"))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"flags version {status['version']}")
    for r in status["rules"]:
        values = {k: v for k, v in r["set"].items() if v is not None}
        print(f"  {r['pool']}: {values} for {r['share']:.0%} of devices")
    for e in status["changes"][-20:]:
        print(f"  {e['time']:.0f} {e['pool']}: {e['detail']}")
    return 0
