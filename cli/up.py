"""``splitasr up``: a coordinator with autoscaled pools of local shard processes (or ``--static``
fixed chains without a coordinator), until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path

from splitasr.models.sources import is_installed
from splitasr.shared.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start a coordinator and its shard pools as local processes")
    p.add_argument("--config", default=None, help="cluster YAML (default: one tiny.en pool, autoscaled)")
    p.add_argument("--host", default=None, help="coordinator address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="coordinator port (default 7070; 0: any free port)")
    p.add_argument("--zeroconf", action="store_true", default=None, help="advertise _splitasr._tcp on the LAN")
    p.add_argument("--ready-file", default=None, help="write {pid, url} here once every pool is up")
    p.add_argument("--workdir", default=None, help="shard logs and ready files (default: a temp dir)")
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="serve the coordinator on https:// (chain)")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="the key of --tls-cert")
    p.add_argument("--backend", choices=["local", "ray"], default=None, help="where shards run (default local)")
    p.add_argument(
        "--address", default=None, help="with --backend ray: auto or HOST:PORT of a running Ray (default: start one)"
    )
    p.add_argument(
        "--detached",
        action="store_true",
        help="with --backend ray: run the coordinator as a detached named actor on the cluster and return",
    )
    p.add_argument("--static", action="store_true", help="fixed chains, no coordinator")
    p.add_argument("--models", default=None, help="comma-separated (default: tiny.en, plus base when installed)")
    p.add_argument("--stage0-replicas", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--int8", action="store_true")
    p.add_argument("--cluster-file", default=None, help="write the shard list (JSON) here once all are ready")
    p.set_defaults(func=cmd_up)
    d = sub.add_parser("down", help="stop the detached coordinator of a Ray cluster (and every shard it started)")
    d.add_argument("--address", default="auto", help="the Ray cluster: auto or HOST:PORT (default auto)")
    d.add_argument("--namespace", default="splitasr", help="Ray namespace of the coordinator actor")
    d.set_defaults(func=cmd_down)


def default_models() -> list[str]:
    return ["tiny.en"] + (["base"] if is_installed("base") else [])


def cmd_up(args: argparse.Namespace) -> int:
    if not args.static:
        return cmd_up_coordinator(args)
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


def cmd_up_coordinator(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    from splitasr.cloud.coordinator.config import load_config
    from splitasr.cloud.coordinator.run import run_coordinator

    port = args.port if args.port is not None else (None if args.config else 7070)
    backend = "ray" if args.address and not args.backend else args.backend
    config = load_config(
        args.config,
        host=args.host,
        port=port,
        zeroconf=args.zeroconf,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        backend=backend,
        ray_address=args.address,
    )
    print(f"admin token: {config.admin_token}  (export SPLITASR_ADMIN_TOKEN=... for scale/drain)", file=sys.stderr)
    if args.detached:
        if config.backend != "ray":
            raise ConfigError("--detached runs the coordinator as a Ray actor: it needs --backend ray")
        if not config.ray_address:  # a private Ray would end with this command, and the actor with it
            raise ConfigError("--detached needs a running Ray cluster: give --address auto or HOST:PORT")
        from splitasr.cloud.coordinator.ray_coordinator import start_detached

        info = start_detached(config)
        print(f"coordinator at {info['url']} (detached Ray actor; `splitasr down` stops it)", flush=True)
        if args.ready_file:
            Path(args.ready_file).write_text(json.dumps(info))
        return 0

    def listening(url: str) -> None:
        print(f"coordinator  {url}", flush=True)
        print(f"dashboard    {url}/ui", flush=True)
        print(f"OpenAI API   {url}/v1  (API key: a device token from `splitasr token DEVICE`)", flush=True)
        print(f"metrics      {url}/metrics", flush=True)
        print(f"starting pools {', '.join(p.model for p in config.pools)} ...", flush=True)

    def ready(url: str) -> None:
        print(f"ready: stream with `splitasr edge --coordinator {url} FILE`; Ctrl-C stops the cluster", flush=True)

    asyncio.run(
        run_coordinator(
            config,
            ready_file=args.ready_file,
            workdir=args.workdir,
            on_listening=listening,
            on_ready=ready,
            show_progress=sys.stderr.isatty(),
        )
    )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from splitasr.cloud.coordinator.ray_coordinator import stop_detached

    if not stop_detached(args.address, args.namespace):
        print(f"no detached coordinator in Ray namespace {args.namespace!r}", flush=True)
        return 1
    print("detached coordinator stopped", flush=True)
    return 0
