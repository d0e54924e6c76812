"""Entry point of the ``splitasr`` command: subcommands are registered by small modules."""

from __future__ import annotations

import argparse
import logging
import sys

import splitasr
from splitasr.shared.errors import SplitASRError


def build_parser() -> argparse.ArgumentParser:
    from splitasr.cli import chaos, cluster, demo, offline, simulate
    from splitasr.edge import cli as edge_cli

    parser = argparse.ArgumentParser(prog="splitasr", description="Edge-cloud split speech recognition.")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    parser.add_argument("--version", action="version", version=f"splitasr {splitasr.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    offline.register(sub)
    cluster.register(sub)
    edge_cli.register(sub)
    demo.register(sub)
    chaos.register(sub)
    simulate.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        return int(args.func(args) or 0)
    except SplitASRError as exc:
        print(f"splitasr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
