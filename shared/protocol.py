"""The versioned msgpack wire protocol between edge agents and shards, and between shards.

Every frame is a msgpack map with ``v`` (protocol version) and ``t`` (frame type); binary
payloads are msgpack ``bin``. Sizes are checked before unpacking; anything malformed raises
:class:`ProtocolError` with a code that the receiver puts into an ERROR frame.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from splitasr.shared.errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024  # edge <-> shard
MAX_STAGE_FRAME_BYTES = 64 * 1024 * 1024  # shard <-> shard (activations, KV tensors)

# Error codes (ERROR.code)
E_TOO_LARGE = "too_large"
E_MALFORMED = "malformed"
E_VERSION = "bad_version"
E_TYPE = "unknown_type"
E_FIELD = "bad_field"
E_SESSION = "unknown_session"
E_STATE = "bad_state"
E_OVERLOAD = "overloaded"
E_SUPERSEDED = "superseded"  # a partial overtaken by a newer partial or its FINAL (stage-to-stage only)
E_INTERNAL = "internal"
E_AUTH = "unauthorized"  # missing, forged or expired device token; a session id owned by another device
E_TIMEOUT = "timeout"  # no HELLO in time, or a session idle too long
E_TICKET = "route_ticket"  # no, a forged or an expired route ticket: ask the coordinator for a route again
MAX_FRAMES_PER_MESSAGE = 3000  # 30 s of log-mel in one FEATURES frame: bounds decoding before any inflating
MAX_ID_CHARS = 128  # device and session ids
IDLE_CONNECTION_S = 10.0  # servers close an HTTP connection with no request in flight after this
# Hang detection. Websocket clients (edge -> stage 0, stage -> stage) ping every HEARTBEAT_S when
# nothing else arrives and drop a peer that does not answer within half of it: a hung peer (SIGSTOP,
# a stuck event loop) is found 1.5 x HEARTBEAT_S after its last frame, and its work is replayed or
# retried elsewhere. A websocket upgrade (and the edge's HELLO -> WELCOME) must finish within
# HANDSHAKE_TIMEOUT_S: a hung listener still completes TCP handshakes from its kernel backlog.
HEARTBEAT_S = 1.0
HANDSHAKE_TIMEOUT_S = 2.0
SUSPECT_S = 5.0  # a replica that failed a call is tried last for this long


@dataclass(frozen=True)
class Frame:
    TYPE: ClassVar[str] = ""


@dataclass(frozen=True)
class Hello(Frame):
    TYPE: ClassVar[str] = "HELLO"
    device_id: str
    token: str = ""
    session_id: str | None = None
    ticket: str = ""  # the coordinator's route ticket for (device, session, this shard)
    language: str | None = None
    split: str = "features"  # or "enc_a": the edge runs encoder A itself (shared/split.py)
    encoder: str = ""  # split "enc_a": the model version of the edge's encoder A (must be the shard's)
    feature_spec: dict = field(default_factory=dict)
    zone: str | None = None
    qos: str = "interactive"  # or "batch": counted apart by the autoscaler (cloud/coordinator/autoscaler.py)
    resume: list = field(default_factory=list)  # utterance ids the edge will replay


@dataclass(frozen=True)
class Welcome(Frame):
    TYPE: ClassVar[str] = "WELCOME"
    session_id: str
    feature_spec: dict
    limits: dict = field(default_factory=dict)
    model_version: str = ""
    flags: dict = field(default_factory=dict)  # the edge flags of this device (as in FLAGS)


@dataclass(frozen=True)
class Features(Frame):
    TYPE: ClassVar[str] = "FEATURES"
    utt: int
    seq: int
    start: int  # index of the first frame within the utterance
    dtype: str  # "int8" | "float16" | "float32"
    scale: float
    shape: list  # [n_mels, n_frames]
    payload: bytes
    offset: float = 0.0  # value = q * scale + offset (int8)
    codec: str = ""  # "" (raw) or "zlib" (payload compressed)
    speech_end: int | None = None  # edge VAD hint: frames of the utterance up to the last voiced one


@dataclass(frozen=True)
class EndOfUtterance(Frame):
    TYPE: ClassVar[str] = "EOU"
    utt: int
    last_seq: int
    speech_end: int | None = None  # frames up to where speech stopped (before the trailing silence)
    frames: int | None = None  # split "enc_a" (no FEATURES sent): the utterance's log-mel frames


@dataclass(frozen=True)
class Partial(Frame):
    TYPE: ClassVar[str] = "PARTIAL"
    utt: int
    text: str
    stable: int = 0  # length (characters) of the stable prefix


@dataclass(frozen=True)
class Final(Frame):
    TYPE: ClassVar[str] = "FINAL"
    utt: int
    text: str
    language: str
    model_version: str
    timings: dict = field(default_factory=dict)
    # the decoder's segments (Whisper timestamp tokens): [start_s, end_s, text] in seconds from the
    # utterance's first frame; the text is their concatenation
    segments: list = field(default_factory=list)


@dataclass(frozen=True)
class Ack(Frame):
    TYPE: ClassVar[str] = "ACK"
    utt: int
    seq: int


@dataclass(frozen=True)
class Error(Frame):
    TYPE: ClassVar[str] = "ERROR"
    code: str
    message: str
    retryable: bool = False
    utt: int | None = None
    req_id: str | None = None  # set when answering a STAGE_REQ
    retry_after_ms: int | None = None  # retry advice (overload): wait this long, or go elsewhere now


@dataclass(frozen=True)
class Drain(Frame):
    TYPE: ClassVar[str] = "DRAIN"
    reason: str = ""
    route: list = field(default_factory=list)


@dataclass(frozen=True)
class Ping(Frame):
    TYPE: ClassVar[str] = "PING"
    nonce: int = 0


@dataclass(frozen=True)
class Pong(Frame):
    TYPE: ClassVar[str] = "PONG"
    nonce: int = 0


@dataclass(frozen=True)
class EdgeFlags(Frame):
    """Shard -> edge: the feature flags an edge applies (``shared/flags.EDGE_FLAGS``), all of them
    each time; sent when the pool's flags change what this device gets."""

    TYPE: ClassVar[str] = "FLAGS"
    values: dict


@dataclass(frozen=True)
class Encode(Frame):
    """Split "enc_a", shard -> edge: run encoder A on a window of utterance ``utt`` (log-mel frames
    ``start:end``, built by ``windows.window_mel(mode, pad_s)``); answered by ACTIVATIONS."""

    TYPE: ClassVar[str] = "ENCODE"
    req: int
    utt: int
    start: int
    end: int
    mode: str
    pad_s: float


@dataclass(frozen=True)
class Activations(Frame):
    """Split "enc_a", edge -> shard: rows ``[rows, n_state]`` of encoder A's output for ENCODE ``req``,
    part ``index`` of ``count`` (a window's activations exceed one frame)."""

    TYPE: ClassVar[str] = "ACTIVATIONS"
    req: int
    index: int
    count: int
    dtype: str  # "float16"
    shape: list  # [rows, n_state]
    payload: bytes


@dataclass(frozen=True)
class StageRequest(Frame):
    TYPE: ClassVar[str] = "STAGE_REQ"
    req_id: str
    model: str
    stage: str
    deadline_ms: float  # budget left when sent, in ms
    tensors: dict  # name -> {"dtype", "shape", "data"}
    priority: int = 0  # 0 final, 1 partial, 2 batch
    meta: dict = field(default_factory=dict)  # stage-specific: prompt, language, token cap


@dataclass(frozen=True)
class StageResponse(Frame):
    TYPE: ClassVar[str] = "STAGE_RES"
    req_id: str
    tensors: dict
    timings: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


FRAME_TYPES: dict[str, type[Frame]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        Features,
        EndOfUtterance,
        Partial,
        Final,
        Ack,
        Error,
        Drain,
        Ping,
        Pong,
        EdgeFlags,
        Encode,
        Activations,
        StageRequest,
        StageResponse,
    )
}


def _check(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_check(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or annotation)


_HINTS = {name: typing.get_type_hints(cls) for name, cls in FRAME_TYPES.items()}


def encode(frame: Frame) -> bytes:
    body = {"v": PROTOCOL_VERSION, "t": frame.TYPE}
    body.update((f.name, getattr(frame, f.name)) for f in dataclasses.fields(frame))
    return msgpack.packb(body, use_bin_type=True)


def decode(data: bytes, max_bytes: int = MAX_FRAME_BYTES) -> Frame:
    """Decode one frame; the size limit is checked before any unpacking."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(E_MALFORMED, f"frames are binary msgpack, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise ProtocolError(E_TOO_LARGE, f"frame of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=max_bytes, max_str_len=max_bytes)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(E_MALFORMED, f"not a msgpack frame ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise ProtocolError(E_MALFORMED, "a frame must be a msgpack map")
    version = body.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(E_VERSION, f"protocol version {version!r} not supported (want {PROTOCOL_VERSION})")
    kind = body.pop("t", None)
    cls = FRAME_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(E_TYPE, f"unknown frame type {kind!r}")
    hints = _HINTS[kind]
    known = {f.name for f in dataclasses.fields(cls)}
    args = {k: v for k, v in body.items() if k in known}  # unknown keys: ignored (forward compatible)
    for name in known:
        if name in args and not _check(args[name], hints[name]):
            raise ProtocolError(E_FIELD, f"{kind}.{name} has type {type(args[name]).__name__}, want {hints[name]}")
    try:
        return cls(**args)
    except TypeError as exc:
        raise ProtocolError(E_FIELD, f"{kind}: {exc}") from None


def error_frame(exc: ProtocolError, utt: int | None = None, req_id: str | None = None) -> Error:
    return Error(
        code=exc.code,
        message=exc.message,
        retryable=exc.retryable,
        utt=utt,
        req_id=req_id,
        retry_after_ms=exc.retry_after_ms,
    )


def http_url(url: str) -> str:
    """The http(s) address of a shard's ws(s) url, for its ``/healthz`` and ``/metrics``."""
    for ws, http in (("ws://", "http://"), ("wss://", "https://")):
        if url.startswith(ws):
            return http + url[len(ws) :]
    return url
