"""The control plane's messages (coordinator <-> shards, coordinator <-> edges), one schema each.

Shared by the coordinator (which validates what arrives), the shard link and the edge (which
validate the answers they act on). Every field is typed and bounded: strings have a length and
alphabet, numbers are finite and in range, URLs are ``ws://`` / ``wss://`` with a host and port.
A message that breaks its schema raises :class:`~splitasr.shared.errors.ConfigError` naming the
field (``register.url: …``).
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from splitasr.shared.errors import ConfigError

STAGES = ("enc_a", "enc_b", "dec")
Stage = Literal["enc_a", "enc_b", "dec"]
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")]
Text = Annotated[str, Field(max_length=200)]
Seconds = Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)]
Millis = Annotated[float, Field(ge=0, le=86_400_000, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=1_000_000_000)]
Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


def _ws_url(url: str) -> str:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("ws", "wss") or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ValueError(f"must be ws://host:port or wss://host:port, got {url!r}")
    return url.rstrip("/")


WsUrl = Annotated[str, Field(max_length=300), AfterValidator(_ws_url)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class ShardInfo(_Message):
    """What a shard says about itself when it registers (``POST /v1/register``)."""

    shard_id: Name
    url: WsUrl
    model: Name  # the pool: one model, e.g. "tiny.en" (English) or "base" (multilingual)
    stage: Stage  # enc_a (stage 0), enc_b or dec
    version: Text = ""  # the stage export's version (manifest)
    config_version: Name = "default"  # the pool version it runs (cluster config ``versions:``)
    weights_sha256: Annotated[str, Field(max_length=64, pattern=r"^[0-9a-f]*$")] = ""
    zone: Name = "local"
    region: Name = "local"
    capacity: Annotated[int, Field(ge=1, le=100_000)] = 64  # sessions (stage 0)
    pid: Annotated[int, Field(ge=1)] | None = None


class ShardLoad(_Message):
    """What a shard reports in each heartbeat (``POST /v1/heartbeat``, with its ``shard_id``)."""

    queue_delay_s: Seconds = 0.0
    sessions: Count = 0
    final_p50_ms: Millis = 0.0
    final_p95_ms: Millis = 0.0
    final_p99_ms: Millis = 0.0
    sessions_started: Count = 0  # cumulative, for arrival rates
    batch_sessions: Count = 0  # of ``sessions``, those of class batch
    overload_level: Annotated[int, Field(ge=0, le=10)] = 0
    busy: Share = 0.0  # share of the last seconds the stage's worker spent computing
    occupancy: Share = 0.0  # decoder: mean running batch / its batch limit
    requests: Count = 0  # stage requests served, cumulative
    # stage 0, cumulative (canary guards compare versions on them)
    finals: Count = 0  # FINALs sent
    empty_finals: Count = 0  # ... of them with no text for an utterance that had audio
    final_errors: Count = 0  # utterances answered with an error instead of a FINAL
    flags_version: Count = 0  # the feature flags (shared/flags.py) this shard applies


class Heartbeat(ShardLoad):
    shard_id: Name


class RouteQuery(_Message):
    """``GET /v1/route``: a new stream (language, zone, region) or a next stage (model, stage)."""

    language: Annotated[str, Field(max_length=16, pattern=r"^[a-z*]{1,8}([_-][A-Za-z0-9]{1,8})?$")] | None = None
    zone: Name | None = None
    region: Name | None = None
    model: Name | None = None  # a next stage's pool, or the pool a new stream asks for (default: by language)
    stage: Stage | None = None
    version: Name | None = None  # a next stage of this pool version (default: the pool's stable one)
    qos: Literal["interactive", "batch"] = "interactive"  # a new stream's class (the ladder defers batch first)
    # a new stream's identity: with ``Authorization: Bearer <device token>``, each stage-0 candidate
    # comes with a route ticket for this session (shards started with --require-ticket ask for one)
    device: Name | None = None
    session: Name | None = None


class Candidate(_Message):
    shard_id: Name
    url: WsUrl
    zone: Name
    region: Name
    sessions: Count
    queue_delay_s: Seconds = 0.0  # the replica's last reported queue delay (stage k picks stage k+1 by it)
    ticket: Annotated[str, Field(max_length=100, pattern=r"^[0-9]{1,12}\.[0-9a-f]{64}$")] | None = None


class RouteAnswer(_Message):
    pool: Name
    stage: Stage
    candidates: list[Candidate]


class StageMeta(BaseModel):
    """The ``meta`` of a STAGE_REQ (stage 0 -> encoder B -> decoder): what the decoder needs."""

    model_config = ConfigDict(extra="ignore", frozen=True)  # lax: msgpack ints may stand for floats

    key: Annotated[str, Field(max_length=300)] | None = None  # the utterance (supersession)
    rev: Annotated[int, Field(ge=0, le=2**31)] = 2**31  # frames covered; FINAL = 2**31
    language: Annotated[str, Field(max_length=16)] | None = None
    audio_s: Annotated[float, Field(gt=0, le=30, allow_inf_nan=False)] = 30.0
    stop_on_loop: bool = False  # the guard decodes this window again if it loops: stop at the first loop


def parse(schema: type[BaseModel], body: object, what: str):
    """``body`` (JSON-decoded) as ``schema``; a :class:`ConfigError` naming the bad fields otherwise.

    Query strings (all values are strings) go through :func:`parse_query` instead."""
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        raise ConfigError(f"{what}: {_explain(exc)}") from None


def parse_query(schema: type[BaseModel], query: dict[str, str], what: str):
    try:
        return schema.model_validate(dict(query), strict=False)
    except ValidationError as exc:
        raise ConfigError(f"{what}: {_explain(exc)}") from None


def _explain(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    shown = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:5]]
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(shown) + more
