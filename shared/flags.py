"""Feature flags: settings the coordinator changes at run time and pushes to shards in the
heartbeat answer (``splitasr flags set POOL partials=false [--share 0.1]``).

A rule sets flags for one pool, for every device or for a share of devices (by a hash of the
device id, :func:`in_share`, the same one canary rollouts use for sessions). Later rules override
earlier ones. Shard-wide flags (the decoder's batch limit) have no device, so their rules cover
every device. The coordinator keeps the rules (``cloud/coordinator/flags.py``); each shard
resolves them for each session (:func:`resolve`).
"""

from __future__ import annotations

import hashlib
from typing import Annotated

from pydantic import ConfigDict, Field

from splitasr.shared.control import Name, Share, _Message

SHARD_WIDE = ("max_batch",)  # applied to the whole shard, never to a share of devices
EDGE_FLAGS = ("endpoint_silence_s",)  # passed on to each session's edge (WELCOME, then FLAGS on change)


class Flags(_Message):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    partials: bool | None = None  # stage 0: PARTIAL results while people speak
    partial_interval_s: Annotated[float, Field(ge=0.1, le=10, allow_inf_nan=False)] | None = None  # their cadence
    max_batch: Annotated[int, Field(ge=1, le=256)] | None = None  # decoder: sequences in its running batch
    # edge: the silence that ends an utterance (its segmenter, from the next pause on)
    endpoint_silence_s: Annotated[float, Field(ge=0.1, le=5, allow_inf_nan=False)] | None = None

    def set_values(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class FlagRule(_Message):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    pool: Name
    share: Share = 1.0  # of devices
    set: Flags


def in_share(key: str, share: float) -> bool:
    """Whether ``key`` (a device or session id) falls in the first ``share`` of a stable hash."""
    if share <= 0:
        return False
    if share >= 1:
        return True
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") / 2**32 < share


def edge_flags(values: dict) -> dict:
    """The part of resolved flag values that an edge applies."""
    return {k: v for k, v in values.items() if k in EDGE_FLAGS}


def resolve(rules: list[FlagRule], device: str | None) -> dict:
    """The flag values for one device (None: shard-wide, rules for every device only), later rules first."""
    out: dict = {}
    for rule in rules:
        if rule.share >= 1 or (device is not None and in_share(device, rule.share)):
            out.update(rule.set.set_values())
    return out
