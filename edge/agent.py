"""The edge agent: audio in, utterances of quantised log-mel out over a websocket; replay until FINAL."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from splitasr.edge.conditioning import Conditioner, ConditionerOptions
from splitasr.edge.segmenter import Audio, Segmenter, SegmenterOptions, Start
from splitasr.shared import protocol as p
from splitasr.shared import tls
from splitasr.shared.auth import edge_token
from splitasr.shared.control import RouteAnswer, parse
from splitasr.shared.errors import ConfigError, EdgeError, SessionRejectedError
from splitasr.shared.features import DEFAULT_SPEC, LogMelStream
from splitasr.shared.limits import Backoff, TokenBucket, jittered
from splitasr.shared.quant import decode_frames, features_frame
from splitasr.shared.split import EDGE_SPLITS, SplitCosts, activation_frames, choose_split
from splitasr.shared.subtitles import Cue, fit_segments

log = logging.getLogger(__name__)

STREAM_PATH = "/v1/stream"
CONNECT_TIMEOUT_S = 5.0
ROUTE_TIMEOUT_S = 5.0  # a route answer from the coordinator (health probes of its candidates not included)
LINK_PROBE_BYTES = 32 * 1024  # split "auto": the body the uplink is timed with
FEATURE_BYTES_PER_S = 6000.0  # int8 + zlib log-mel, until this session has measured its own


def _pacer(limits: dict) -> TokenBucket | None:
    """A token bucket of feature frames for a shard's announced audio rate limit (None: no limit)."""
    rate, burst = limits.get("max_audio_rate"), limits.get("audio_burst_s")
    if not all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in (rate, burst)):
        return None
    fps = DEFAULT_SPEC.frames_per_second
    return TokenBucket(0.95 * rate * fps, 0.9 * burst * fps)  # a margin: the clocks differ a little


def stream_url(url: str) -> str:
    return url if url.rstrip("/").endswith(STREAM_PATH) else url.rstrip("/") + STREAM_PATH


@dataclass(frozen=True)
class AgentOptions:
    shards: tuple[str, ...] = ()
    coordinator: str | None = None  # ask its /v1/route for shards instead of (before) ``shards``
    zone: str | None = None
    region: str | None = None
    device_id: str = "edge"
    token: str = ""  # device token (shared/auth.py); default: $SPLITASR_DEVICE_TOKEN
    language: str | None = None  # None: detected by the multilingual pool, then routed by (language routing)
    model: str | None = None  # ask the coordinator for this model's pool (default: the language's pool)
    qos: str = "interactive"  # or "batch": may wait, deferred or shed first under overload
    max_defer_s: float = 600.0  # batch: how long in all to wait while the coordinator defers the session
    dtype: str = "int8"
    frames_per_message: int = 20  # 200 ms of features per FEATURES frame
    split: str = "features"  # or "enc_a" (encoder A here, activations up) or "auto" (shared/split.py)
    encoder_model: str = "tiny.en"  # split enc_a/auto: encoder A's model (the shard must serve the same)
    encoder_threads: int = 1
    split_recheck_s: float = 30.0  # split auto: measure again between utterances after this long
    final_timeout_s: float = 60.0
    reconnect_max_s: float = 2.0
    max_reconnects: int = 20
    heartbeat_s: float = p.HEARTBEAT_S  # a shard silent for 1.5x this is hung: reconnect elsewhere, replay
    handshake_timeout_s: float = p.HANDSHAKE_TIMEOUT_S  # websocket upgrade, and HELLO -> WELCOME
    segmenter: SegmenterOptions = field(default_factory=SegmenterOptions)
    conditioner: ConditionerOptions = field(default_factory=ConditionerOptions)

    def __post_init__(self) -> None:
        if self.qos not in ("interactive", "batch"):
            raise ConfigError(f"qos must be interactive or batch, got {self.qos!r}")
        if self.split not in EDGE_SPLITS:
            raise ConfigError(f"split must be one of {EDGE_SPLITS}, got {self.split!r}")
        if not (isinstance(self.encoder_threads, int) and 1 <= self.encoder_threads <= 64):
            raise ConfigError(f"encoder_threads must be an integer in [1, 64], got {self.encoder_threads!r}")
        for name in ("heartbeat_s", "handshake_timeout_s", "final_timeout_s", "reconnect_max_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and 0.05 <= value <= 3600):
                raise ConfigError(f"{name} must be a number of seconds in [0.05, 3600], got {value!r}")


@dataclass(frozen=True)
class FinalResult:
    utt: int
    text: str
    language: str
    model_version: str
    latency_s: float  # end of speech (wall clock) to FINAL received; includes the VAD's trailing silence
    audio_s: float
    eou_latency_s: float = 0.0  # EOU sent (the endpoint decision) to FINAL received
    start_s: float = 0.0  # the utterance in stream time (seconds from the start of the input):
    end_s: float = 0.0  # first sample sent (pre-roll included) to the end of speech
    received_s: float = 0.0  # when the FINAL arrived, in seconds since the first audio chunk
    segments: tuple = ()  # the decoder's segments in stream time: (start_s, end_s, text), Whisper timestamps

    def cues(self) -> list[Cue]:
        """Subtitle cues of this utterance: the decoder's segments fitted to the speech the VAD found
        (``fit_segments``), or the whole utterance as one cue when the shard sent none."""
        parts = list(self.segments) or [(self.start_s, self.end_s, self.text)]
        return fit_segments(parts, self.start_s, self.end_s)


@dataclass
class AgentReport:
    finals: list[FinalResult] = field(default_factory=list)
    partials: int = 0
    bytes_sent: int = 0
    speech_s: float = 0.0
    reconnects: int = 0
    duplicate_finals: int = 0
    empty_finals: int = 0  # utterances the recogniser found no speech in (not passed to on_final)
    utterances: int = 0  # ended (EOU sent); run() returns only once each has its FINAL
    shards: list[str] = field(default_factory=list)  # stage-0 urls that accepted the session, in order
    language: str | None = None  # the hint, or the language detected on the first FINAL with text
    language_moves: int = 0  # moves to the detected language's pool (between utterances)
    flags: list[dict] = field(default_factory=list)  # edge flags the shards set (WELCOME, FLAGS), in order
    splits: list[str] = field(default_factory=list)  # the split of each session opened, in order
    split_costs: list[dict] = field(default_factory=list)  # split auto: what each choice weighed
    edge_encode_s: float = 0.0  # split enc_a: encoder A time on this device

    @property
    def bytes_per_speech_s(self) -> float:
        return self.bytes_sent / self.speech_s if self.speech_s else 0.0


def _segments(raw: list, start_s: float) -> tuple:
    """A FINAL's segments ([start, end, text] from the utterance's first frame) in stream time;
    malformed entries (a shard of another version) are skipped."""
    out = []
    for seg in raw if isinstance(raw, list) else []:
        if isinstance(seg, list) and len(seg) == 3 and isinstance(seg[2], str):
            try:
                out.append((start_s + float(seg[0]), start_s + float(seg[1]), seg[2]))
            except (TypeError, ValueError):
                continue
    return tuple(out)


class EdgeAgent:
    """Streams one audio source as one session; survives shard loss by reconnecting and replaying."""

    def __init__(
        self,
        options: AgentOptions,
        on_partial: Callable[[p.Partial], None] | None = None,
        on_final: Callable[[FinalResult], None] | None = None,
    ):
        if not options.shards and not options.coordinator:
            raise EdgeError("the edge agent needs a coordinator url or at least one shard url")
        self.o = options
        self.session_id = uuid.uuid4().hex
        self.on_partial = on_partial
        self.on_final = on_final
        self.report = AgentReport(language=options.language)
        self._relocate = False  # a language was detected: move to its pool once between utterances
        self._defer_s = 0.0  # batch: the coordinator said to come back after this long
        self._ring = [stream_url(u) for u in options.shards]  # static shards, taken in turn
        self._turn = itertools.count()
        self._routed: list[str] = []  # candidates from the coordinator, best first
        self._reroute = False  # a session was lost: ask the coordinator again before using _routed
        self._tickets: dict[str, str] = {}  # stream url -> the coordinator's route ticket for this session
        self._pending: dict[int, list[bytes]] = {}  # utt -> encoded frames, kept until its FINAL
        self._ended: dict[int, tuple[float, float, float]] = {}  # utt -> (speech end, EOU sent, audio seconds)
        self._done: set[int] = set()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._url = ""  # the shard of the current session
        self._pace: TokenBucket | None = None  # the shard's audio rate limit (WELCOME.limits), kept to
        self._suspect: dict[str, float] = {}  # url -> monotonic time until which it is tried last
        self._lock = asyncio.Lock()  # orders sends against replay
        self._all_final = asyncio.Event()
        self._first_chunk_at: float | None = None
        self._source_done = False
        self._split = "enc_a" if options.split == "enc_a" else "features"  # of the current session
        self._split_at = -math.inf  # split auto: when the choice was last measured
        self.encoder = None  # split enc_a/auto: an EdgeEncoder, loaded when the run starts
        self._mel: dict[int, list[np.ndarray]] = {}  # split enc_a: utt -> its log-mel, kept until its FINAL
        self._encoding: set[asyncio.Task] = set()  # split enc_a: ENCODE requests being answered
        self.segmenter = Segmenter(options.segmenter)  # its endpoint silence follows the pool's flags

    def use_ticket(self, url: str, ticket: str) -> None:
        """Present ``ticket`` to shard ``url``: for a session routed by its caller, not by ``/v1/route``
        (the coordinator's WER probe, which mints its own tickets)."""
        self._tickets[stream_url(url)] = ticket

    # -- connection ---------------------------------------------------------------------------
    async def _connect(self, http: aiohttp.ClientSession) -> None:
        """Connect to the next shard, say HELLO, replay every utterance without a FINAL."""
        backoff = Backoff(0.05, self.o.reconnect_max_s)  # jittered: edges that lost one shard spread out
        refusal: p.Error | None = None
        deferred_s, attempt = 0.0, 0
        while attempt < self.o.max_reconnects:
            url = await self._next_url(http)
            if url is None and self._defer_s:  # batch work deferred by an overloaded pool: wait, as told
                wait_s, self._defer_s = jittered(self._defer_s), 0.0
                deferred_s += wait_s
                if deferred_s > self.o.max_defer_s:
                    raise SessionRejectedError(
                        f"the coordinator deferred this batch session for more than {self.o.max_defer_s:.0f} s",
                        "overloaded",
                    )
                log.info("batch session %s deferred; asking again in %.1f s", self.session_id, wait_s)
                await asyncio.sleep(wait_s)
                continue
            attempt += 1
            if url is None:
                await asyncio.sleep(backoff.next())  # no shard known right now; ask again after a back-off
                continue
            ws = None
            if self.o.split == "auto" and self._idle():  # the split changes only between utterances
                self._split = await self._choose_split(http, url)  # before connecting: HELLO has a deadline
            try:
                # a hung shard still accepts TCP from its kernel backlog: bound the upgrade and the HELLO
                connect = http.ws_connect(url, max_msg_size=4 * p.MAX_FRAME_BYTES, heartbeat=self.o.heartbeat_s)
                ws = await asyncio.wait_for(connect, self.o.handshake_timeout_s)
                hello = p.Hello(
                    device_id=self.o.device_id,
                    token=edge_token(self.o.device_id, self.o.token),
                    session_id=self.session_id,
                    ticket=self._tickets.get(url, ""),
                    language=self.report.language,
                    split=self._split,
                    qos=self.o.qos,
                    encoder=self.encoder.version if self._split == "enc_a" else "",
                    feature_spec=DEFAULT_SPEC.to_dict(),
                    resume=sorted(self._pending),
                )
                await ws.send_bytes(p.encode(hello))
                reply = p.decode((await ws.receive(timeout=self.o.handshake_timeout_s)).data)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, TypeError, p.ProtocolError) as exc:
                log.warning("cannot open a session on %s (%r); trying the next shard", url, exc)
                self._suspect[url] = time.monotonic() + p.SUSPECT_S
                if ws is not None:
                    await ws.close()
                await asyncio.sleep(backoff.next())  # back-off between attempts
                continue
            if isinstance(reply, p.Error):
                await ws.close()
                if reply.code == p.E_TICKET:  # expired, or a shard the coordinator did not send us to
                    self._tickets.pop(url, None)
                    self._routed = []
                if not reply.retryable:
                    raise EdgeError(f"shard {url} refused the session: {reply.code}: {reply.message}")
                refusal = reply
                log.info("shard %s refused the session (%s: %s)", url, reply.code, reply.message)
                advised_s = self._told_to_wait(url, reply.retry_after_ms)
                await asyncio.sleep(min(max(backoff.next(), advised_s), self.o.reconnect_max_s))
                continue
            self._ws, self._url = ws, url
            self._pace = _pacer(reply.limits if isinstance(reply, p.Welcome) else {})
            self.report.shards.append(url)
            self.report.splits.append(self._split)
            if isinstance(reply, p.Welcome):
                self._apply_flags(reply.flags)
            for utt in sorted(self._pending):
                for data in self._pending[utt]:
                    await self._send_raw(data)
            log.info(
                "session %s on %s (attempt %d, replayed %d utterances)",
                self.session_id,
                url,
                attempt,
                len(self._pending),
            )
            return
        if refusal is not None:
            raise SessionRejectedError(
                f"no shard accepted the session after {self.o.max_reconnects} attempts; "
                f"last refusal: {refusal.code}: {refusal.message}",
                refusal.code,
                refusal.retry_after_ms,
            )
        raise EdgeError(f"no shard accepted the session after {self.o.max_reconnects} attempts")

    async def _route(self, http: aiohttp.ClientSession, timeout_s: float = ROUTE_TIMEOUT_S) -> list[str]:
        """Stage-0 candidates from the coordinator, best first; unreachable ones (no /healthz) dropped."""
        params = {"device": self.o.device_id, "session": self.session_id}
        params |= {"language": self.report.language} if self.report.language else {}  # none: detected
        params |= {"model": self.o.model} if self.o.model else {}
        params |= {"qos": self.o.qos} if self.o.qos != "interactive" else {}
        params |= {k: v for k, v in (("zone", self.o.zone), ("region", self.o.region)) if v}
        token = edge_token(self.o.device_id, self.o.token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        base = self.o.coordinator.rstrip("/")
        try:
            timeout = aiohttp.ClientTimeout(total=timeout_s)
            async with http.get(f"{base}/v1/route", params=params, headers=headers, timeout=timeout) as resp:
                body = await resp.json()
                if resp.status in (400, 401):
                    raise EdgeError(f"coordinator refused the route: {body.get('error')}")
                if resp.status == 503 and self.o.qos == "batch" and body.get("code") == "overloaded":
                    retry_ms = body.get("retry_after_ms") or 0
                    if not retry_ms:  # shed: this class of work is not taken now
                        raise SessionRejectedError(f"coordinator: {body.get('error')}", "overloaded")
                    self._defer_s = retry_ms / 1000
                    return []
                if resp.status != 200:
                    log.warning("no route yet (%s): %s", resp.status, body.get("error"))
                    return []
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            log.warning("coordinator %s unreachable (%r)", base, exc)
            return []
        try:
            candidates = parse(RouteAnswer, body, "route answer").candidates
        except ConfigError as exc:
            log.warning("coordinator %s sent a bad route answer (%s)", base, exc)
            return []
        now = time.monotonic()
        # failed us lately: not worth a probe while the coordinator has not noticed, unless they are all there is
        fresh = [c for c in candidates if self._suspect.get(stream_url(c.url), 0.0) <= now] or candidates
        # probed all at once: a hung candidate (its kernel still accepts TCP) costs one timeout, not one each
        alive = await asyncio.gather(*(self._probe(http, c.url) for c in fresh))
        urls = []
        for candidate, ok in zip(fresh, alive, strict=True):
            if ok:
                urls.append(stream_url(candidate.url))
                if candidate.ticket:
                    self._tickets[urls[-1]] = candidate.ticket
        return urls

    async def _probe(self, http: aiohttp.ClientSession, url: str) -> bool:
        """Whether stage-0 shard ``url`` answers its /healthz within the handshake timeout."""
        try:
            timeout = aiohttp.ClientTimeout(total=self.o.handshake_timeout_s)
            async with http.get(f"{p.http_url(url)}/healthz", timeout=timeout) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return False

    def _told_to_wait(self, url: str, retry_after_ms: int | None) -> float:
        """A shard's ``retry_after_ms`` (e.g. overloaded, at HELLO or mid-session), jittered: the shard
        is tried last for that long. Returns the seconds (0: none given)."""
        wait_s = jittered((retry_after_ms or 0) / 1000)
        if wait_s:
            self._suspect[url] = time.monotonic() + wait_s
        return wait_s

    def _trusted(self, urls: list[str]) -> list[str]:
        """``urls`` with those that failed lately moved to the end (kept: they may be all there is)."""
        now = time.monotonic()
        return sorted(urls, key=lambda u: self._suspect.get(u, 0.0) > now)

    async def _next_url(self, http: aiohttp.ClientSession) -> str | None:
        if self.o.coordinator:
            now = time.monotonic()
            spare = [u for u in self._routed if self._suspect.get(u, 0.0) <= now]
            # none left, only suspects, or a shard was lost (the others listed may have died since);
            # with a spare listed, a slow coordinator is given only a handshake's time
            if self._reroute or not spare:
                timeout_s = self.o.handshake_timeout_s if spare else ROUTE_TIMEOUT_S
                self._reroute = False
                self._routed = await self._route(http, timeout_s) or self._routed  # the old list if no answer
            if self._routed:
                self._routed = self._trusted(self._routed)
                return self._routed.pop(0)
        if not self._ring:
            return None
        first = next(self._turn) % len(self._ring)
        return self._trusted(self._ring[first:] + self._ring[:first])[0]

    async def _send_raw(self, data: bytes) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return  # the reader notices the loss and reconnects; the frame is replayed then
        try:
            await ws.send_bytes(data)
            self.report.bytes_sent += len(data)
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            log.info("send failed (%r); the frame will be replayed", exc)

    async def _send(self, utt: int, frame: p.Frame) -> None:
        if isinstance(frame, p.Features) and self._pace is not None and self._split != "enc_a":
            while wait_s := self._pace.take(frame.shape[1]):  # faster than real time: paced
                await asyncio.sleep(min(wait_s, 1.0))
        async with self._lock:  # the split changes under this lock (_connect), between utterances only
            if self._split == "enc_a":  # the log-mel stays here; the EOU says how many frames it has
                if isinstance(frame, p.Features):
                    self._mel.setdefault(utt, []).append(decode_frames(frame, DEFAULT_SPEC.n_mels))
                    return
                if isinstance(frame, p.EndOfUtterance):
                    frames = sum(m.shape[1] for m in self._mel.get(utt, []))
                    frame = dataclasses.replace(frame, last_seq=-1, frames=frames)
            data = p.encode(frame)
            self._pending.setdefault(utt, []).append(data)
            await self._send_raw(data)

    async def _reader(self, http: aiohttp.ClientSession) -> None:
        """Receive PARTIAL/FINAL/ERROR/DRAIN; on a lost connection reconnect and replay."""
        while True:
            ws = self._ws
            reconnect = False
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                frame = p.decode(msg.data)
                if isinstance(frame, p.Final):
                    self._on_final(frame)
                    if self._relocate and not self._pending and not self._source_done:
                        self._relocate = False
                        if await self._language_moves(http):
                            reconnect = True
                            break
                    if await self._split_changes(http):
                        reconnect = True
                        break
                elif isinstance(frame, p.Encode):
                    self._spawn_encode(frame)
                elif isinstance(frame, p.EdgeFlags):
                    self._apply_flags(frame.values)
                elif isinstance(frame, p.Partial):
                    self.report.partials += 1
                    if self.on_partial and frame.utt not in self._done:
                        self.on_partial(frame)
                elif isinstance(frame, p.Drain) or (isinstance(frame, p.Error) and frame.retryable):
                    log.info("shard asked us to move (%s); reconnecting", frame)
                    if isinstance(frame, p.Error):
                        self._told_to_wait(self._url, frame.retry_after_ms)
                    reconnect = True
                    break
                elif isinstance(frame, p.Error):
                    log.error("shard error: %s: %s", frame.code, frame.message)
            if not reconnect and ws.closed and self._all_final.is_set():
                return
            if not reconnect:  # lost (crashed, hung: no pong within half a heartbeat), not asked to move
                log.warning("lost the session on %s (%r); reconnecting elsewhere", self._url, ws.exception())
                self._suspect[self._url] = time.monotonic() + p.SUSPECT_S
                self._reroute = bool(self.o.coordinator)
            await ws.close()
            self.report.reconnects += 1
            async with self._lock:
                await self._connect(http)

    def _apply_flags(self, values: dict) -> None:
        """The pool's edge flags (``shared/flags.EDGE_FLAGS``); a flag not set means this edge's own option."""
        silence = values.get("endpoint_silence_s", self.o.segmenter.trailing_silence_s)
        if not (isinstance(silence, int | float) and math.isfinite(silence)):
            log.warning("ignoring a bad endpoint_silence_s flag %r", silence)
            return
        if silence != self.segmenter.o.trailing_silence_s:
            try:
                self.segmenter.retune(float(silence))
            except ConfigError as exc:
                log.warning("ignoring the endpoint_silence_s flag: %s", exc)
                return
            log.info("endpoint silence %.2f s (flags)", silence)
        if not self.report.flags or self.report.flags[-1] != values:
            self.report.flags.append(dict(values))

    # -- split point ------------------------------------------------------------------------
    def _idle(self) -> bool:
        """No utterance open or waiting for its FINAL."""
        return not self._pending and not self._mel

    async def _measure_link(self, http: aiohttp.ClientSession, url: str) -> SplitCosts | None:
        """Round trip, uplink bandwidth and the shard's encoder-A cost, from ``url``'s ``/v1/link``."""
        base = p.http_url(url).removesuffix(STREAM_PATH)
        timeout = aiohttp.ClientTimeout(total=15)
        try:
            started = time.monotonic()
            async with http.get(f"{base}/healthz", timeout=timeout) as resp:
                await resp.read()
            rtt_s = time.monotonic() - started
            started = time.monotonic()
            async with http.post(f"{base}/v1/link", data=bytes(LINK_PROBE_BYTES), timeout=timeout) as resp:
                shard = await resp.json()
            elapsed_s = time.monotonic() - started
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            log.info("cannot measure the link to %s (%r); split stays %s", url, exc, self._split)
            return None
        if resp.status != 200 or not isinstance(shard, dict) or shard.get("encoder") != self.encoder.version:
            return None  # an older shard, or another model: only features will do
        try:  # the shard's numbers: all present, numeric and finite, or the link is not measured
            got = {k: float(shard[k]) for k in ("enc_a_s_per_window_s", "queue_delay_s", "pad_s")}
            got |= {k: float(shard.get(k, 0.0)) for k in ("speculate_after_s", "rest_s_per_window_s")}
        except (KeyError, TypeError, ValueError):
            got = {}
        if not got or not all(math.isfinite(v) and v >= 0 for v in got.values()):
            log.info("the link answer of %s is not usable (%r): no measurement", url, shard)
            return None
        speculate_s = got["speculate_after_s"]
        sent = self.report.bytes_sent - sum(len(d) for frames in self._pending.values() for d in frames)
        return SplitCosts(
            edge_s_per_window_s=self.encoder.s_per_window_s,
            cloud_s_per_window_s=got["enc_a_s_per_window_s"],
            cloud_queue_s=got["queue_delay_s"],
            uplink_bytes_s=LINK_PROBE_BYTES / max(elapsed_s - rtt_s, 1e-4),
            rtt_s=rtt_s,
            feature_bytes_per_s=sent / self.report.speech_s
            if self._split == "features" and self.report.speech_s > 5
            else FEATURE_BYTES_PER_S,
            activation_bytes_per_s=self.encoder.activation_bytes_per_s,
            pad_s=got["pad_s"],
            cloud_rest_s_per_window_s=got["rest_s_per_window_s"],
            overlap_s=max(0.0, self.segmenter.o.trailing_silence_s - speculate_s) if speculate_s > 0 else 0.0,
        )

    async def _choose_split(self, http: aiohttp.ClientSession, url: str) -> str:
        self._split_at = time.monotonic()
        costs = await self._measure_link(http, url)
        split = choose_split(costs) if costs is not None else "features"
        self.report.split_costs.append({"url": url, "split": split, **(dataclasses.asdict(costs) if costs else {})})
        log.info("split %s for %s (%s)", split, url, costs)
        return split

    async def _split_changes(self, http: aiohttp.ClientSession) -> bool:
        """Split auto, between utterances once ``split_recheck_s`` has passed: whether the link or the
        shard changed enough that the session should reopen with the other split."""
        if self.o.split != "auto" or not self._idle() or self._source_done:
            return False
        if time.monotonic() - self._split_at < self.o.split_recheck_s:
            return False
        if await self._choose_split(http, self._url) == self._split:
            return False
        self._routed = [self._url]  # the same shard, the other split
        return True

    def _spawn_encode(self, frame: p.Encode) -> None:
        task = asyncio.create_task(self._encode(frame))
        self._encoding.add(task)
        task.add_done_callback(self._encoding.discard)

    async def _encode(self, frame: p.Encode) -> None:
        """Split enc_a: encoder A on the window the shard asked for, its activations sent back on
        the connection that asked (request ids are per connection: after a reconnect the new
        shard asks again, and late parts must not land on its requests)."""
        asked_on = self._ws
        chunks = self._mel.get(frame.utt)
        if chunks is None or self.encoder is None or frame.mode not in ("trimmed", "long", "full"):
            log.warning("ENCODE for utterance %d (%s) not answerable here", frame.utt, frame.mode)
            return
        raw = np.concatenate(chunks, axis=1)[:, frame.start : frame.end]
        started = time.perf_counter()
        hidden = await asyncio.to_thread(self.encoder.encode, raw, frame.mode, frame.pad_s)
        self.report.edge_encode_s += time.perf_counter() - started
        for part in activation_frames(frame.req, hidden):
            if self._ws is not asked_on:
                log.info("ENCODE %d of utterance %d: its connection is gone, not answered", frame.req, frame.utt)
                return
            await self._send_raw(p.encode(part))

    async def _language_moves(self, http: aiohttp.ClientSession) -> bool:
        """Whether the session moves to its detected language's pool: the coordinator's route for
        that language no longer offers the current shard. Called between utterances only (nothing
        waits for a FINAL), so the move replays and repeats nothing."""
        urls = await self._route(http)
        if not urls or self._url in urls:
            return False
        log.info("session %s: language %s detected; moving to its pool", self.session_id, self.report.language)
        self._routed = urls
        self.report.language_moves += 1
        return True

    def _on_final(self, frame: p.Final) -> None:
        if frame.utt in self._done:
            self.report.duplicate_finals += 1
            return
        self._done.add(frame.utt)
        self._pending.pop(frame.utt, None)
        self._mel.pop(frame.utt, None)
        now = time.monotonic()
        ended_at, eou_at, audio_s, start_s, end_s = self._ended.get(frame.utt, (now, now, 0.0, 0.0, 0.0))
        result = FinalResult(
            frame.utt,
            frame.text,
            frame.language,
            frame.model_version,
            now - ended_at,
            audio_s,
            now - eou_at,
            start_s,
            end_s,
            now - self._first_chunk_at if self._first_chunk_at is not None else 0.0,
            _segments(frame.segments, start_s),
        )
        self.report.finals.append(result)  # every utterance's FINAL, for exactly-once accounting
        if self.report.language is None and result.text.strip() and frame.language:
            self.report.language = frame.language  # no hint: the first FINAL with text names the language
            self._relocate = bool(self.o.coordinator)
        if not result.text.strip():  # the VAD opened an utterance, the recogniser found no speech
            self.report.empty_finals += 1
        elif self.on_final:
            self.on_final(result)
        if self._source_done and not self._pending:
            self._all_final.set()

    # -- audio ------------------------------------------------------------------------------
    async def run(self, source: AsyncIterator[np.ndarray]) -> AgentReport:
        """Stream ``source`` to the end, wait for every FINAL, return the report."""
        return await self._run(lambda: self._stream(source))

    async def run_frames(self, frames: AsyncIterator[EdgeFrame]) -> AgentReport:
        """Like :meth:`run`, from frames the edge pipeline made before (:func:`replay_frames`)."""
        return await self._run(lambda: self.send_frames(frames))

    async def _run(self, sending: Callable[[], Coroutine]) -> AgentReport:
        """Connect, run ``sending()`` (made only once connected), wait for every FINAL."""
        # connecting is bounded, so a dead or hung listener costs seconds, not forever
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S)
        if self.o.split != "features" and self.encoder is None:
            from splitasr.edge.encoder import EdgeEncoder  # onnxruntime and the model: only for this

            self.encoder = await asyncio.to_thread(EdgeEncoder, self.o.encoder_model, self.o.encoder_threads)
        async with aiohttp.ClientSession(timeout=timeout, connector=tls.connector()) as http:
            async with self._lock:
                await self._connect(http)
            reader = asyncio.create_task(self._reader(http))
            try:
                await sending()
                self._source_done = True
                if not self._pending:
                    self._all_final.set()
                waiter = asyncio.create_task(self._all_final.wait())
                done, _ = await asyncio.wait(
                    {waiter, reader}, timeout=self.o.final_timeout_s, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                if reader in done and reader.exception():
                    raise reader.exception()
                if not self._all_final.is_set():
                    raise EdgeError(f"no FINAL for utterances {sorted(self._pending)} after {self.o.final_timeout_s} s")
            finally:
                reader.cancel()
                for task in self._encoding:
                    task.cancel()
                await asyncio.gather(reader, *self._encoding, return_exceptions=True)
                if self._ws is not None:
                    await self._ws.close()
        return self.report

    async def _stream(self, source: AsyncIterator[np.ndarray]) -> None:
        await self.send_frames(edge_frames(source, self.o, self.segmenter))

    async def send_frames(self, frames: AsyncIterator[EdgeFrame]) -> None:
        """Send what :func:`edge_frames` makes (live, or replayed from a recording), keeping the
        bookkeeping of each utterance (its stream times, when its speech ended, what to replay)."""
        rate = DEFAULT_SPEC.sample_rate
        async for item in frames:
            now = time.monotonic()
            if self._first_chunk_at is None:
                self._first_chunk_at = now - item.at_sample / rate
            if item.frame is None:
                continue
            if isinstance(item.frame, p.EndOfUtterance):
                utt_start, speech_end, audio_s = item.ended
                self.report.speech_s += audio_s
                self.report.utterances += 1
                self._ended[item.utt] = (
                    now - (item.at_sample - speech_end) / rate,
                    now,
                    audio_s,
                    utt_start / rate,
                    speech_end / rate,
                )
            await self._send(item.utt, item.frame)


@dataclass(frozen=True)
class EdgeFrame:
    """One frame the edge sends, with the input position (samples at 16 kHz) it was made at."""

    at_sample: int
    utt: int = -1
    frame: p.Frame | None = None  # None: the input started (stream time zero)
    ended: tuple[int, int, float] | None = None  # EOU: (first sample, speech end sample, audio seconds)


async def edge_frames(
    source: AsyncIterator[np.ndarray], o: AgentOptions, segmenter: Segmenter | None = None
) -> AsyncIterator[EdgeFrame]:
    """The edge's pipeline: audio in; conditioning, VAD and endpointing, log-mel, int8 frames out.

    Pure of the network, so a benchmark can record a stream's frames once and replay them in real
    time from many cheap clients (:func:`replay_frames`)."""
    conditioner = Conditioner(o.conditioner)
    segmenter = segmenter or Segmenter(o.segmenter)
    utt = -1
    mel: LogMelStream | None = None
    buffered: list[np.ndarray] = []
    seq = frame_index = 0
    consumed = 0  # samples pushed so far
    utt_start = 0  # first sample of the open utterance
    hop = DEFAULT_SPEC.hop_length

    def speech_end_frames(sample: int) -> int:
        return max(0, -(-(sample - utt_start) // hop))

    def frames_of(frames: np.ndarray, final: bool) -> list[EdgeFrame]:
        nonlocal seq, frame_index
        out = []
        buffered.append(frames)
        total = sum(b.shape[1] for b in buffered)
        while total >= o.frames_per_message or (final and total):
            block = np.concatenate(buffered, axis=1)
            take = block[:, : o.frames_per_message]
            rest = block[:, o.frames_per_message :]
            buffered[:] = [rest] if rest.shape[1] else []
            frame = features_frame(take, utt, seq, frame_index, o.dtype)
            hint = speech_end_frames(segmenter.speech_end_sample)
            out.append(EdgeFrame(consumed, utt, dataclasses.replace(frame, speech_end=hint)))
            seq += 1
            frame_index += take.shape[1]
            total = rest.shape[1]
        return out

    def handle(event) -> list[EdgeFrame]:
        nonlocal utt, seq, frame_index, mel, utt_start
        if isinstance(event, Start):
            utt, seq, frame_index, mel = utt + 1, 0, 0, LogMelStream(DEFAULT_SPEC)
            utt_start = event.sample
            buffered.clear()
            return []
        if isinstance(event, Audio):
            return frames_of(mel.push(event.samples), final=False)
        out = frames_of(mel.flush(), final=True)  # End
        audio_s = frame_index / DEFAULT_SPEC.frames_per_second
        eou = p.EndOfUtterance(utt=utt, last_seq=seq - 1, speech_end=speech_end_frames(event.speech_end_sample))
        return [*out, EdgeFrame(consumed, utt, eou, (utt_start, event.speech_end_sample, audio_s))]

    started = False
    async for chunk in source:
        if not started:
            started = True
            yield EdgeFrame(0)
        consumed += len(chunk)
        for event in segmenter.push(conditioner.process(chunk)):
            for item in handle(event):
                yield item
    for event in segmenter.finish():
        for item in handle(event):
            yield item


async def record_frames(source: AsyncIterator[np.ndarray], o: AgentOptions) -> list[EdgeFrame]:
    """Every frame of a source (read as fast as it comes: pass a source that is not paced)."""
    return [item async for item in edge_frames(source, o)]


async def replay_frames(frames: list[EdgeFrame], realtime: bool = True) -> AsyncIterator[EdgeFrame]:
    """Recorded frames again, each at its stream time (from now) when ``realtime``."""
    start = time.monotonic()
    for item in frames:
        if realtime:
            wait_s = start + item.at_sample / DEFAULT_SPEC.sample_rate - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)  # pacing to the input's own clock
        yield item
