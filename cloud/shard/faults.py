"""Injected faults of a stage-0 shard (``splitasr shard --inject-fault``), for canary and chaos tests.

A version of a pool can be made deliberately bad so that a rollout's guards are seen to catch it:
``slow:MS`` delays every FINAL by MS milliseconds, ``empty`` answers every utterance with an empty
FINAL, ``garbage`` replaces every FINAL's text. Never set in production configs.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitasr.shared.errors import ConfigError

GARBAGE = "zxq vbn qqq"


@dataclass(frozen=True)
class Fault:
    kind: str  # slow | empty | garbage
    delay_s: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Fault:
        kind, _, arg = spec.partition(":")
        if kind == "slow":
            try:
                millis = float(arg)
            except ValueError:
                millis = -1.0
            if not 0 < millis <= 60_000:
                raise ConfigError(f"--inject-fault slow:MS needs MS in (0, 60000], got {spec!r}")
            return cls("slow", millis / 1000)
        if kind in ("empty", "garbage") and not arg:
            return cls(kind)
        raise ConfigError(f"--inject-fault takes slow:MS, empty or garbage, got {spec!r}")

    def text(self, text: str) -> str:
        return {"empty": "", "garbage": GARBAGE}.get(self.kind, text)
