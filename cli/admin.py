"""``splitasr status | scale POOL N | drain SHARD``: talk to a running coordinator."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

from splitasr.shared import tls
from splitasr.shared.control import STAGES
from splitasr.shared.errors import ConfigError, SplitASRError

DEFAULT_COORDINATOR = "http://127.0.0.1:7070"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--coordinator",
        default=os.environ.get("SPLITASR_COORDINATOR", DEFAULT_COORDINATOR),
        help="coordinator URL (default $SPLITASR_COORDINATOR or http://127.0.0.1:7070)",
    )
    p.add_argument("--token", default=None, help="admin token (default $SPLITASR_ADMIN_TOKEN)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="pools, replicas, zones, latency percentiles, breaker states")
    _common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("scale", help="pin a pool stage's replicas to N (or 'auto' to autoscale again)")
    _common(p)
    p.add_argument("pool")
    p.add_argument("replicas", help="an integer, or auto")
    p.add_argument("--stage", choices=STAGES, default="enc_a", help="which stage's pool (default: stage 0)")
    p.set_defaults(func=cmd_scale)
    p = sub.add_parser("drain", help="move a shard's sessions away between utterances, then stop it")
    _common(p)
    p.add_argument("shard_id")
    p.set_defaults(func=cmd_drain)
    p = sub.add_parser(
        "token", help="mint a device token for an edge (needs the cluster secret: $SPLITASR_CLUSTER_SECRET[_FILE])"
    )
    p.add_argument("device_id")
    p.add_argument("--ttl-hours", type=float, default=24 * 30, help="lifetime (default 30 days)")
    p.set_defaults(func=cmd_token)
    from splitasr.cli import flags, rollout

    rollout.register(sub)
    flags.register(sub)


def call(base: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
    """One JSON request to the coordinator; errors become :class:`SplitASRError` with its message."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base.rstrip("/") + path, data=data, method="POST" if body is not None else "GET")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=tls.client_context()) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise SplitASRError(f"coordinator said {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SplitASRError(f"cannot reach the coordinator at {base}: {exc}") from None


def parse_assignments(items: list[str], what: str = "guards", name: str = "NAME") -> dict:
    """``NAME=VALUE`` arguments (values as JSON: true, 0.4, 8) as a dict; ConfigError for a bad one."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{what} are {name}=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            raise ConfigError(f"{what}: {key}={value!r} is not a value (true, false, a number)") from None
    return out


def _token(args: argparse.Namespace) -> str:
    token = args.token or os.environ.get("SPLITASR_ADMIN_TOKEN")
    if not token:
        raise ConfigError("an admin token is needed: --token or $SPLITASR_ADMIN_TOKEN (printed by splitasr up)")
    return token


def _finals(pool: dict) -> str:
    """FINAL latency percentiles of the last minute, or that there were none (no traffic yet)."""
    if pool.get("final_p50_ms") is None:
        return "no FINALs in the last minute"
    return f"FINAL p50/p95/p99 {pool['final_p50_ms']}/{pool['final_p95_ms']}/{pool['final_p99_ms']} ms"


def cmd_status(args: argparse.Namespace) -> int:
    status = call(args.coordinator, "/v1/pools", token=args.token or os.environ.get("SPLITASR_ADMIN_TOKEN"))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    for pool in status["pools"]:
        print(
            f"pool {pool['model']} ({', '.join(pool['languages'])}) version {pool.get('version', 'default')}: "
            f"{pool['replicas']} replicas "
            f"(desired {pool['desired']}, spares {pool['spares']}, starting {pool['starting']}), "
            f"{pool['sessions']} sessions, {_finals(pool)}, "
            f"queue {pool['queue_delay_ms']} ms, cold start {pool['cold_start_s']} s"
        )
        for rule in pool.get("flags", []):
            values = {k: v for k, v in rule["set"].items() if v is not None}
            print(f"  flags: {values} for {rule['share']:.0%} of devices")
        r = pool.get("rollout")
        if r:
            share = f"canary share {r['share']:.0%}"
            print(f"  rollout {r['stable']} -> {r['canary']}: {r['status']}, {share} {r['reason']}")
        for s in pool["shards"]:
            state = "draining" if s["draining"] else "spare" if s["spare"] else s["breaker"]
            print(
                f"  {s['shard_id']:28} {s['stage']:5} {s.get('config_version', ''):8} zone {s['zone']:8} {state:9} "
                f"sessions {s['sessions']:3}  "
                f"p50 {s['final_p50_ms']:6.0f} ms  p99 {s['final_p99_ms']:6.0f} ms  {s.get('url', '')}"
            )
        for stage, st in pool.get("stages", {}).items():
            last = st["decisions"][-1] if st["decisions"] else None
            print(
                f"  {stage:5}: {st['replicas']} replicas (desired {st['desired']}, starting {st['starting']}), "
                f"busy {st['busy']}, queue {st['queue_delay_ms']} ms"
                + (f"; last decision: {last['replicas']} ({last['reason']})" if last else "")
            )
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    replicas: int | str = args.replicas
    if replicas != "auto":
        try:
            replicas = int(replicas)
        except ValueError:
            raise ConfigError(f"replicas must be an integer or 'auto', got {args.replicas!r}") from None
    body = {"pool": args.pool, "replicas": replicas, "stage": args.stage}
    answer = call(args.coordinator, "/v1/scale", body, _token(args))
    pinned = "autoscaled" if answer["pinned"] is None else f"pinned to {answer['pinned']}"
    print(f"pool {answer['pool']} {answer['stage']}: {pinned}")
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    answer = call(args.coordinator, "/v1/drain", {"shard_id": args.shard_id}, _token(args))
    print(f"draining {answer['shard_id']} ({answer['sessions']} sessions to move)", file=sys.stdout)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from splitasr.shared.auth import SECRET_ENV, ClusterAuth, secret_from_env

    secret = secret_from_env()
    if secret is None:
        raise ConfigError(f"minting a device token needs the cluster secret: set ${SECRET_ENV} (or its _FILE form)")
    print(ClusterAuth(secret).device_token(args.device_id, ttl_s=args.ttl_hours * 3600))
    return 0
