"""Cluster subcommands: ``shard`` (one stage process) and ``up --static`` (a local chain per model)."""

from __future__ import annotations

import argparse
import asyncio

from splitasr.models.sources import MODELS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shard", help="run one recogniser shard (one stage of one model)")
    p.add_argument("--model", default="tiny.en", choices=sorted(MODELS))
    p.add_argument(
        "--stage",
        default="enc_a",
        choices=["enc_a", "enc_b", "dec"],
        help="enc_a: stage 0, owns edge sessions; enc_b: encoder part B; dec: cross-KV + decoder",
    )
    p.add_argument(
        "--next",
        action="append",
        default=[],
        metavar="URL",
        help="ws://HOST:PORT of a next-stage replica (repeat for failover)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (see --ready-file)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads (spinning is off)")
    p.add_argument(
        "--whole-chain",
        action="store_true",
        help="stage 0 runs encoder B and the decoder in this process too (one process, no network hop)",
    )
    p.add_argument("--int8", action="store_true")
    p.add_argument("--partial-interval-s", type=float, default=0.4, help="audio seconds between partials (0: off)")
    p.add_argument("--max-batch", type=int, default=16, help="decoder: sequences in the running batch")
    p.add_argument(
        "--encoder-max-batch", type=int, default=0, help="encoders: micro-batch size (0: device default, 1 on CPU)"
    )
    p.add_argument("--max-sessions", type=int, default=64, help="stage 0: edge sessions admitted")
    p.add_argument(
        "--queue-budget-s",
        type=float,
        default=0.5,
        help="stage 0: queue delay at which partials stop (half: back off; twice: refuse new sessions)",
    )
    p.add_argument("--cache-ttl-s", type=float, default=30.0, help="stage 0: keep results by feature hash (0: off)")
    p.add_argument(
        "--speculate-after-s",
        type=float,
        default=0.25,
        help="stage 0: start an utterance's FINAL after this much pause (edge hint), before its EOU",
    )
    p.add_argument("--ready-file", default=None, help="write {pid, port, url} here once loaded and warmed up")
    p.add_argument("--coordinator", default=None, metavar="URL", help="register + heartbeat there; find --next there")
    p.add_argument("--shard-id", default=None, help="name in the coordinator's registry (default: generated)")
    p.add_argument(
        "--max-audio-rate", type=float, default=4.0, help="stage 0: audio per device, times real time (after a burst)"
    )
    p.add_argument(
        "--audio-burst-s", type=float, default=60.0, help="stage 0: seconds of audio a device may send at once"
    )
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="serve wss:// and https:// with this certificate")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="the key of --tls-cert")
    p.add_argument(
        "--orphan-after-s",
        type=float,
        default=0.0,
        help="exit when the coordinator has been unreachable this long (0: never; shards started by one: 60)",
    )
    p.add_argument("--zone", default="local", help="locality label used by the router")
    p.add_argument("--region", default="local", help="locality label used by the router")
    p.add_argument("--config-version", default="default", help="the pool version this shard runs (rollouts)")
    p.add_argument(
        "--inject-fault",
        default=None,
        metavar="FAULT",
        help="stage 0, for canary and chaos tests only: slow:MS (delay FINALs), empty or garbage (their text)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="serve without credentials when no cluster secret is set (development on a closed host only)",
    )
    p.add_argument(
        "--require-ticket",
        action="store_true",
        help="stage 0: admit a session only with the coordinator's route ticket for it (coordinator-started: on)",
    )
    p.add_argument("--idle-timeout-s", type=float, default=60.0, help="stage 0: close sessions silent this long")
    p.add_argument("--hello-timeout-s", type=float, default=10.0, help="stage 0: close connections without HELLO")
    p.set_defaults(func=cmd_shard)

    from splitasr.cli import admin, up

    up.register(sub)
    admin.register(sub)


def cmd_shard(args: argparse.Namespace) -> int:
    from splitasr.cloud.shard.server import serve

    asyncio.run(serve(shard_config(args)))
    return 0


def shard_config(args: argparse.Namespace):
    """The :class:`ShardConfig` of parsed ``splitasr shard`` flags (also used by the Ray backend's actors)."""
    from splitasr.cloud.shard.config import ShardConfig
    from splitasr.shared.auth import secret_from_env

    return ShardConfig(
        model=args.model,
        role=args.stage,
        next_urls=tuple(args.next),
        host=args.host,
        port=args.port,
        threads=args.threads,
        int8=args.int8,
        partial_interval_s=args.partial_interval_s,
        ready_file=args.ready_file,
        max_batch=args.max_batch,
        encoder_max_batch=args.encoder_max_batch,
        max_sessions=args.max_sessions,
        queue_budget_s=args.queue_budget_s,
        cache_ttl_s=args.cache_ttl_s,
        speculate_after_s=args.speculate_after_s,
        coordinator_url=args.coordinator,
        shard_id=args.shard_id,
        orphan_after_s=args.orphan_after_s,
        max_audio_rate=args.max_audio_rate,
        audio_burst_s=args.audio_burst_s,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        zone=args.zone,
        region=args.region,
        config_version=args.config_version,
        inject_fault=args.inject_fault,
        secret=secret_from_env(),
        insecure=args.insecure,
        require_ticket=args.require_ticket,
        whole_chain=args.whole_chain,
        idle_timeout_s=args.idle_timeout_s,
        hello_timeout_s=args.hello_timeout_s,
    )
