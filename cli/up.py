"""``splitasr up --static``: a local chain of shard processes per language pool, until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import signal
import threading

from splitasr.models.sources import is_installed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start a local cluster of shard processes")
    p.add_argument("--static", action="store_true", help="fixed chains, no coordinator (the default for now)")
    p.add_argument("--models", default=None, help="comma-separated (default: tiny.en, plus base when installed)")
    p.add_argument("--stage0-replicas", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--int8", action="store_true")
    p.add_argument("--cluster-file", default=None, help="write the shard list (JSON) here once all are ready")
    p.set_defaults(func=cmd_up)


def default_models() -> list[str]:
    return ["tiny.en"] + (["base"] if is_installed("base") else [])


def cmd_up(args: argparse.Namespace) -> int:
    from splitasr.cloud.local_cluster import ChainSpec, LocalCluster

    models = args.models.split(",") if args.models else default_models()
    chains = [ChainSpec(m, enc_a=args.stage0_replicas, threads=args.threads, int8=args.int8) for m in models]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalCluster(chains) as cluster:
        shards = cluster.describe()
        for s in shards:
            print(f"{s['model']:8} {s['role']:6} pid {s['pid']:>7}  {s['url']}")
        if args.cluster_file:
            with open(args.cluster_file, "w") as f:
                json.dump(shards, f)
        print("cluster up; Ctrl-C stops it", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0
