"""The edge-session websocket of a stage-0 shard: HELLO, FEATURES, EOU in; PARTIAL, FINAL, ERROR out."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
import uuid

import aiohttp
from aiohttp import web

from splitasr.cloud.shard.appkeys import CONFIG, METRICS, SOCKETS, STAGE0, is_ready
from splitasr.cloud.shard.overload import partial_interval
from splitasr.cloud.shard.scheduler import PRIORITY_FINAL, PRIORITY_PARTIAL, Superseded
from splitasr.cloud.shard.session import Session, Utterance, stable_prefix
from splitasr.cloud.shard.stage0 import Stage0, Windows
from splitasr.cloud.shard.supersession import FINAL_REV
from splitasr.cloud.shard.windows import window_frames
from splitasr.shared import protocol as p
from splitasr.shared.errors import AuthError, ProtocolError, SplitASRError, StageUnavailableError, UnknownLanguageError
from splitasr.shared.limits import TokenBucket
from splitasr.shared.quant import decode_frames
from splitasr.shared.split import SPLITS, ActivationAssembler

log = logging.getLogger(__name__)

SESSION_OWNERS_KEPT = 10_000  # recent session ids remembered with their device (resume binding)
ENCODE_TIMEOUT_S = 20.0  # split "enc_a": an edge that sends no activations for this long is given up on
MAX_LINK_PROBE_BYTES = p.MAX_FRAME_BYTES  # POST /v1/link: the body an edge times its uplink with


class EdgeWindows(Windows):
    """Split ``enc_a``: the edge holds the log-mel and runs encoder A on each window asked for."""

    def __init__(self, conn: Connection, utt: int, frames: int):
        self.conn, self.utt, self.frames = conn, utt, frames

    async def encode(self, start, mode, priority, stale):
        return await self.conn.request_activations(self.utt, start, self.frames, mode), 0.0


class Connection:
    """One edge connection: its session, its in-flight recognition tasks, and a send lock."""

    def __init__(self, ws: web.WebSocketResponse, stage0: Stage0, config, metrics, model_version: str):
        self.ws = ws
        self.stage0 = stage0
        self.config = config
        self.metrics = metrics
        self.model_version = model_version
        self.session: Session | None = None
        self.tasks: set[asyncio.Task] = set()
        self.partial_running: set[int] = set()
        self.drained = False
        self.split = "features"
        self.qos = "interactive"
        self.edge_flags: dict = {}  # what the edge was last told (WELCOME, FLAGS)
        self.encodes: dict[int, tuple[ActivationAssembler, asyncio.Future]] = {}  # ENCODE req -> its answer
        self._reqs = itertools.count()
        self._send_lock = asyncio.Lock()

    async def send(self, frame: p.Frame) -> None:
        if self.ws.closed:
            return
        async with self._send_lock:
            await self.ws.send_bytes(p.encode(frame))

    async def send_error(self, exc: ProtocolError, utt: int | None = None) -> None:
        self.metrics.errors.labels(exc.code).inc()  # rejected input is counted; logged at DEBUG only
        log.debug("session %s: error %s", self.session.session_id if self.session else "-", exc)
        await self.send(p.error_frame(exc, utt))

    def spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- frames -----------------------------------------------------------------------------
    def check_identity(self, hello: p.Hello) -> None:
        """The device token, the session's owner and the device's session count; ProtocolError if not."""
        if not 0 < len(hello.device_id) <= p.MAX_ID_CHARS:
            raise ProtocolError(p.E_FIELD, f"HELLO.device_id must have 1..{p.MAX_ID_CHARS} characters")
        if hello.session_id is not None and not 0 < len(hello.session_id) <= p.MAX_ID_CHARS:
            raise ProtocolError(p.E_FIELD, f"HELLO.session_id must have 1..{p.MAX_ID_CHARS} characters")
        if self.config.auth is not None:
            try:
                self.config.auth.check_device(hello.device_id, hello.token)
            except AuthError as exc:
                raise ProtocolError(p.E_AUTH, str(exc)) from None
        if self.config.require_ticket:  # retryable: the edge asks the coordinator for a fresh route
            try:
                self.config.auth.check_route_ticket(
                    hello.device_id, hello.session_id or "", self.config.shard_id, hello.ticket
                )
            except AuthError as exc:
                raise ProtocolError(p.E_TICKET, str(exc), retryable=True) from None
        owner = self.stage0.session_owners.get(hello.session_id or "")
        if owner is not None and owner != hello.device_id:
            raise ProtocolError(p.E_AUTH, f"session {hello.session_id} belongs to another device")
        if self.stage0.device_sessions[hello.device_id] >= self.config.max_sessions_per_device:
            raise ProtocolError(
                p.E_OVERLOAD,
                f"device {hello.device_id} has {self.config.max_sessions_per_device} sessions open here",
                retryable=True,
                retry_after_ms=1000,
            )

    def own_session(self, session_id: str, device_id: str) -> None:
        """Bind ``session_id`` to ``device_id``; a connection of the same session still open is closed
        (the device reconnected; the old connection is dead or half-open)."""
        stage0 = self.stage0
        stage0.session_owners[session_id] = device_id
        stage0.session_owners.move_to_end(session_id)
        while len(stage0.session_owners) > SESSION_OWNERS_KEPT:
            stage0.session_owners.popitem(last=False)
        old = stage0.live_sessions.get(session_id)
        if old is not None and old is not self:
            self.spawn(old.ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"session resumed elsewhere"))
        stage0.live_sessions[session_id] = self
        stage0.device_sessions[device_id] += 1

    async def on_hello(self, hello: p.Hello) -> None:
        self.check_identity(hello)
        spec = self.stage0.spec
        if hello.feature_spec and hello.feature_spec != spec.to_dict():
            raise ProtocolError(
                p.E_FIELD, f"feature spec {hello.feature_spec} differs from the shard's {spec.to_dict()}"
            )
        if hello.qos not in ("interactive", "batch"):
            raise ProtocolError(p.E_FIELD, f"HELLO.qos must be interactive or batch, got {hello.qos!r}")
        if hello.split not in SPLITS:
            raise ProtocolError(p.E_FIELD, f"split point {hello.split!r} not served here (one of {SPLITS})")
        if hello.split == "enc_a" and hello.encoder != self.model_version:
            raise ProtocolError(
                p.E_FIELD,
                f"the edge's encoder A is {hello.encoder or 'not named'!r}, this shard serves "
                f"{self.model_version}: split 'enc_a' needs the same weights (or use split 'features')",
            )
        try:
            self.stage0.tokenizer.check_language(hello.language)
        except UnknownLanguageError as exc:
            raise ProtocolError("unknown_language", str(exc)) from None
        try:
            self.stage0.admit_session(self.stage0.active_sessions)
        except ProtocolError:
            self.metrics.rejected_sessions.inc()
            raise
        session_id = hello.session_id or uuid.uuid4().hex
        self.split, self.qos = hello.split, hello.qos
        self.own_session(session_id, hello.device_id)
        self.session = Session(
            session_id, hello.device_id, hello.language, self.stage0.max_frames, self.config.max_open_utterances
        )
        self.metrics.active_sessions.inc()
        self.stage0.active_sessions += 1
        self.stage0.sessions_started += 1
        self.stage0.batch_sessions += hello.qos == "batch"
        self.stage0.connections.add(self)
        limits = {
            "max_frame_bytes": p.MAX_FRAME_BYTES,
            "max_utterance_s": self.config.max_utterance_s,
            "max_audio_rate": self.config.max_audio_rate,  # the edge paces itself to stay within it
            "audio_burst_s": self.config.audio_burst_s,
        }
        self.edge_flags = self.stage0.edge_flags_for(hello.device_id)
        await self.send(
            p.Welcome(
                session_id=session_id,
                feature_spec=spec.to_dict(),
                limits=limits,
                model_version=self.model_version,
                flags=self.edge_flags,
            )
        )
        log.info("session %s from device %s (resume %s)", session_id, hello.device_id, hello.resume)

    async def send_edge_flags(self) -> None:
        """FLAGS to the edge when the pool's flags changed what its device gets."""
        if self.session is None:
            return
        values = self.stage0.edge_flags_for(self.session.device_id)
        if values != self.edge_flags:
            self.edge_flags = values
            await self.send(p.EdgeFlags(values=values))

    def charge_audio(self, frames: int) -> None:
        """The device's audio rate limit (over all its sessions here); ProtocolError when it sends faster."""
        device = self.session.device_id
        fps = self.stage0.spec.frames_per_second
        bucket = self.stage0.device_audio.get(device)
        if bucket is None:
            bucket = TokenBucket(self.config.max_audio_rate * fps, self.config.audio_burst_s * fps)
            self.stage0.device_audio[device] = bucket
        wait_s = bucket.take(frames)
        if wait_s == float("inf"):  # more at once than the burst holds: no wait would let it through
            raise ProtocolError(
                p.E_TOO_LARGE,
                f"{frames / fps:.1f} s of audio at once exceeds the device's burst of {self.config.audio_burst_s:g} s",
            )
        if wait_s:
            raise ProtocolError(
                p.E_OVERLOAD,
                f"device {device} sends audio faster than {self.config.max_audio_rate:g}x real time "
                f"(after a {self.config.audio_burst_s:g} s burst); this frame was refused",
                retryable=True,
                retry_after_ms=min(60_000, math.ceil(wait_s * 1000)),
            )

    async def on_features(self, frame: p.Features) -> None:
        if self.split != "features":
            raise ProtocolError(p.E_STATE, "FEATURES on a split 'enc_a' session: send EOU with frames instead")
        raw = decode_frames(frame, self.stage0.spec.n_mels)
        self.charge_audio(raw.shape[1])
        u = self.session.add_features(frame.utt, frame.seq, frame.start, raw, frame.speech_end)
        if u is None:
            return
        overload = self.stage0.overload
        flags = self.stage0.flags_for(self.session.device_id) if self.stage0.flag_rules else {}
        base_s = flags.get("partial_interval_s", self.config.partial_interval_s) if flags.get("partials", True) else 0
        seconds = partial_interval(base_s, overload.update(time.perf_counter()), overload.policy)
        if seconds is None:
            return
        if self.config.speculate_after_s > 0 and u.pause_frames() >= self.speculate_frames:
            # a pause: speech may have ended. Start its FINAL now, on exactly the frames the FINAL
            # will use if the EOU confirms this end; regular partials of the silence add nothing.
            if u.speculated_end != u.speech_end:
                u.speculated_end = u.speech_end
                self.metrics.speculations.inc()
                self.spawn(self.run_speculative(u, u.speech_end))
            return
        interval = int(seconds * self.stage0.spec.frames_per_second)
        if u.utt not in self.partial_running and u.n_frames - u.partial_at_frames >= interval:
            u.partial_at_frames = u.n_frames
            self.partial_running.add(u.utt)
            self.spawn(self.run_partial(u))

    async def on_eou(self, frame: p.EndOfUtterance) -> None:
        u = self.session.utterances.get(frame.utt)
        if u is not None and u.ended:
            if u.final is not None:  # replayed EOU: the edge missed our FINAL
                await self.send(u.final)
            return
        if self.split == "enc_a":  # no FEATURES came: the EOU says how long the utterance is
            if frame.frames is None or not 0 <= frame.frames <= self.stage0.max_frames:
                raise ProtocolError(
                    p.E_FIELD, f"EOU.frames must be 0..{self.stage0.max_frames} on a split 'enc_a' session"
                )
            self.charge_audio(frame.frames)
        u = self.session.end(frame.utt, frame.last_seq)  # a new utterance only within the open limit
        if self.split == "enc_a":
            u.n_frames = frame.frames
        if u.n_frames == 0:  # nothing to recognise: the answer is an empty FINAL, at once
            u.final = p.Final(
                utt=u.utt, text="", language=self.session.language or "", model_version=self.model_version
            )
            await self.send(u.final)
            return
        self.spawn(self.run_final(u, time.perf_counter(), frame.speech_end))

    # -- recognition ------------------------------------------------------------------------
    def utterance_key(self, u: Utterance) -> str:
        return f"{self.session.session_id}/{u.utt}"

    @property
    def speculate_frames(self) -> int:
        return max(1, int(self.config.speculate_after_s * self.stage0.spec.frames_per_second))

    def final_frames(self, u: Utterance, speech_end: int | None) -> int:
        """Frames the FINAL recognises: up to the speech end plus a short tail, when the edge says where."""
        if speech_end is not None:
            speech_end = min(max(0, speech_end), u.n_frames)  # a hostile hint cannot cut frames off the end
        if self.config.speculate_after_s <= 0 or speech_end is None or u.n_frames - speech_end < self.speculate_frames:
            return u.n_frames
        return speech_end + self.speculate_frames

    async def run_speculative(self, u: Utterance, speech_end: int) -> None:
        """The FINAL-to-be of a pause, at FINAL priority; sent as a PARTIAL, kept for the EOU by feature hash."""
        frames = self.final_frames(u, speech_end)
        try:
            text, _, _, _ = await self.stage0.recognise(
                u.raw(frames), self.session.language, PRIORITY_FINAL, key=self.utterance_key(u) + "/spec", rev=frames
            )
        except (SplitASRError, aiohttp.ClientError) as exc:
            log.info("speculative final of utterance %d not used: %s", u.utt, exc)
            return
        if not u.ended:
            await self.send_partial(u, text)

    async def send_partial(self, u: Utterance, text: str) -> None:
        stable = stable_prefix(u.hypotheses[-1], text) if u.hypotheses else 0
        u.hypotheses = [*u.hypotheses[-1:], text]
        self.metrics.partials.inc()
        await self.send(p.Partial(utt=u.utt, text=text, stable=stable))

    async def run_partial(self, u: Utterance) -> None:
        try:
            text, _, _, _ = await self.stage0.recognise(
                u.raw(),
                self.session.language,
                PRIORITY_PARTIAL,
                stale=lambda: u.ended,
                key=self.utterance_key(u),
                rev=u.n_frames,
            )
        except Superseded:
            return
        except (SplitASRError, aiohttp.ClientError) as exc:
            log.warning("partial of utterance %d failed: %s", u.utt, exc)
            return
        finally:
            self.partial_running.discard(u.utt)
        if u.ended:  # a FINAL is on its way; this partial is superseded
            self.metrics.dropped_partials.inc()
            return
        await self.send_partial(u, text)

    async def request_activations(self, utt: int, start: int, end: int, mode: str):
        """Split ``enc_a``: ask the edge for encoder A's output on the window of frames ``start:end``."""
        pad_s = self.config.pad_s
        rows = window_frames(end - start, mode, self.stage0.spec, pad_s) // 2
        req = next(self._reqs)
        future = asyncio.get_running_loop().create_future()
        self.encodes[req] = (ActivationAssembler(rows, self.stage0.worker.dims["n_state"]), future)
        try:
            await self.send(p.Encode(req=req, utt=utt, start=start, end=end, mode=mode, pad_s=pad_s))
            return await asyncio.wait_for(future, ENCODE_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise StageUnavailableError(
                f"the edge sent no activations for utterance {utt} within {ENCODE_TIMEOUT_S:g} s"
            ) from None
        finally:
            self.encodes.pop(req, None)

    def on_activations(self, frame: p.Activations) -> None:
        entry = self.encodes.get(frame.req)
        if entry is None:
            raise ProtocolError(p.E_STATE, f"ACTIVATIONS for request {frame.req}, which is not open")
        assembler, future = entry
        try:
            hidden = assembler.add(frame)
        except ProtocolError as exc:  # the window's recognition fails with it, and the edge hears why
            self.encodes.pop(frame.req, None)
            if not future.done():
                future.set_exception(exc)
            raise
        if hidden is not None and not future.done():
            future.set_result(hidden)

    async def run_final(self, u: Utterance, eou_at: float, speech_end: int | None = None) -> None:
        frames = self.final_frames(u, speech_end)
        try:
            text, language, timings, segments = await self.stage0.recognise(
                u.raw(frames) if self.split == "features" else EdgeWindows(self, u.utt, frames),
                self.session.language,
                PRIORITY_FINAL,
                key=self.utterance_key(u),
                rev=FINAL_REV,
            )
        except ProtocolError as exc:
            self.stage0.final_errors += 1
            await self.send_error(exc, u.utt)
            return
        except Exception as exc:  # a stage lost or failing: never leave the edge waiting for this FINAL
            # the edge keeps the utterance and replays it elsewhere; nothing is lost
            if not isinstance(exc, StageUnavailableError | SplitASRError | aiohttp.ClientError):
                log.exception("FINAL of utterance %d failed", u.utt)
            self.stage0.final_errors += 1
            await self.send_error(ProtocolError(p.E_INTERNAL, str(exc), retryable=True), u.utt)
            return
        if self.stage0.fault is not None:  # a deliberately bad version (canary tests)
            await asyncio.sleep(self.stage0.fault.delay_s)
            text = self.stage0.fault.text(text)
        self.stage0.finals += 1
        self.stage0.empty_finals += not text.strip()
        u.final = p.Final(
            utt=u.utt,
            text=text,
            language=language,
            model_version=self.model_version,
            timings={k: round(v, 2) for k, v in timings.items()},
            segments=segments if self.stage0.fault is None else [],
        )
        self.session.forget(u.utt)
        now = time.perf_counter()
        self.metrics.final_seconds.observe(now - eou_at)
        self.stage0.final_ms.add(now, (now - eou_at) * 1000)
        self.metrics.finals.inc()
        await self.send(u.final)
        if self.stage0.draining:
            await self.drain_if_idle()

    async def drain_now(self) -> None:
        """Ask the edge to move at once, open utterances too: it replays those without a FINAL
        elsewhere (a rolled-back version: its answers are not wanted)."""
        if self.session is None or self.drained:
            return
        self.drained = True
        log.info("session %s: DRAIN now", self.session.session_id)
        await self.send(p.Drain(reason="shard version rolled back"))

    async def drain_if_idle(self) -> None:
        """While draining: between utterances (every one ended and answered), ask the edge to move."""
        if self.session is None or self.drained:
            return
        if any(not u.ended or u.final is None for u in self.session.utterances.values()):
            return  # an utterance is open or its FINAL is still coming; asked again after that FINAL
        self.drained = True
        log.info("session %s: DRAIN", self.session.session_id)
        await self.send(p.Drain(reason="shard draining"))

    async def dispatch(self, data: bytes) -> None:
        frame = p.decode(data)
        if isinstance(frame, p.Ping):
            await self.send(p.Pong(nonce=frame.nonce))
        elif isinstance(frame, p.Hello):
            if self.session is not None:
                raise ProtocolError(p.E_STATE, "HELLO already received on this connection")
            await self.on_hello(frame)
        elif self.session is None:
            raise ProtocolError(p.E_SESSION, f"{frame.TYPE} before HELLO: no session on this connection")
        elif isinstance(frame, p.Features):
            await self.on_features(frame)
        elif isinstance(frame, p.EndOfUtterance):
            await self.on_eou(frame)
        elif isinstance(frame, p.Activations):
            self.on_activations(frame)
        else:
            raise ProtocolError(p.E_STATE, f"unexpected {frame.TYPE} frame from an edge")

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session is not None:
            self.metrics.active_sessions.dec()
            self.stage0.active_sessions -= 1
            self.stage0.batch_sessions -= self.qos == "batch"
            self.stage0.connections.discard(self)
            self.stage0.device_sessions[self.session.device_id] -= 1
            if self.stage0.device_sessions[self.session.device_id] <= 0:
                del self.stage0.device_sessions[self.session.device_id]
                self.stage0.device_audio.pop(self.session.device_id, None)
            if self.stage0.live_sessions.get(self.session.session_id) is self:
                del self.stage0.live_sessions[self.session.session_id]
            self.stage0.session_closed()


async def link_handler(request: web.Request) -> web.Response:
    """``POST /v1/link``: an edge times its uplink with a body of up to 64 kB (split ``auto``) and
    reads what this shard's encoder A costs now."""
    if not is_ready(request.app):
        raise web.HTTPServiceUnavailable(text="shard not ready")
    received = 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
        if received > MAX_LINK_PROBE_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_LINK_PROBE_BYTES, actual_size=received)
    stage0 = request.app[STAGE0]
    return web.json_response(
        {
            "received": received,
            "encoder": stage0.worker.artifacts.version,
            "enc_a_s_per_window_s": stage0.worker.enc_a_s_per_window_s,
            "rest_s_per_window_s": stage0.rest_s_per_window_s,
            "queue_delay_s": stage0.overload.window.estimate(time.perf_counter()),
            "speculate_after_s": request.app[CONFIG].speculate_after_s,
            "pad_s": request.app[CONFIG].pad_s,
        }
    )


async def stream_handler(request: web.Request) -> web.WebSocketResponse:
    if not is_ready(request.app):
        raise web.HTTPServiceUnavailable(text="shard not ready")
    # accept up to 4x the frame limit so oversized frames get an ERROR frame, not a dropped connection
    ws = web.WebSocketResponse(max_msg_size=4 * p.MAX_FRAME_BYTES, heartbeat=20)
    await ws.prepare(request)
    app = request.app
    app[SOCKETS].add(ws)
    config = app[CONFIG]
    conn = Connection(ws, app[STAGE0], config, app[METRICS], app[STAGE0].worker.artifacts.version)
    loop = asyncio.get_running_loop()
    last_frame = loop.time()  # the deadlines run from here: websocket pongs (and PINGs before HELLO) do not count
    try:
        while not ws.closed:
            # a connection must say HELLO soon, and a session must not sit silent forever
            timeout = config.hello_timeout_s if conn.session is None else config.idle_timeout_s
            try:  # one deadline for the wait, whatever control frames arrive meanwhile
                msg = await asyncio.wait_for(ws.receive(), max(0.0, last_frame + timeout - loop.time()))
            except asyncio.TimeoutError:
                what = "no HELLO" if conn.session is None else "session idle"
                await conn.send_error(ProtocolError(p.E_TIMEOUT, f"{what} for {timeout:g} s; closing"))
                break
            if msg.type == aiohttp.WSMsgType.BINARY:
                try:
                    await conn.dispatch(msg.data)
                except ProtocolError as exc:
                    await conn.send_error(exc, getattr(exc, "utt", None))
                    if exc.code == p.E_AUTH:
                        break
                if conn.session is not None:
                    last_frame = loop.time()
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await conn.send_error(ProtocolError(p.E_MALFORMED, "text messages are not frames; send binary msgpack"))
            elif msg.type == aiohttp.WSMsgType.ERROR:
                log.debug("websocket error: %s", ws.exception())
            else:  # CLOSE, CLOSING, CLOSED
                break
    finally:
        await ws.close()
        await conn.close()
    return ws
