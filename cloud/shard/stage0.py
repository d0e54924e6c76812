"""Stage 0 of recognition: the shard's edge sessions, encoder A here, the rest of the chain through
the stage client, the guard's plan per utterance, a result cache and the shard's overload state."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from splitasr.cloud.shard.guard import DecodeResult, GuardOptions, WindowMode, has_next, judge, plan
from splitasr.cloud.shard.overload import OverloadPolicy, OverloadState, SlidingWindow
from splitasr.cloud.shard.recognizer import consume_window
from splitasr.cloud.shard.result_cache import ResultCache, feature_key
from splitasr.cloud.shard.roles import EncoderA
from splitasr.cloud.shard.scheduler import PRIORITY_FINAL, Superseded
from splitasr.cloud.shard.supersession import FINAL_REV
from splitasr.cloud.shard.tensors import unpack
from splitasr.cloud.shard.windows import window_mel
from splitasr.models.tokenizer import DecoderConfig, WhisperTokenizer
from splitasr.shared import protocol as p
from splitasr.shared.errors import OverloadedError, ProtocolError
from splitasr.shared.flags import FlagRule, edge_flags, resolve
from splitasr.shared.limits import TokenBucket
from splitasr.shared.split import ENCODER_FRAMES_PER_S

log = logging.getLogger(__name__)
FINAL_LATENCY_WINDOW_S = 60.0  # the FINAL latency percentiles a heartbeat reports cover this long

MAX_FINAL_WINDOWS = 6  # decoding passes of one FINAL (guard retries and continuations after a stop)


def window_choice(priority: int) -> str:
    """FINALs take the guard's plan (``auto``); partials one trimmed window."""
    return "auto" if priority == PRIORITY_FINAL else "trimmed"


class Stage0:
    """The stage-0 side of recognition: encoder A here, the rest of the chain through the stage client.

    Also owns the shard's overload state (fed by the queue delays each request meets) and a cache of
    recent results by feature hash; identical work already in flight is joined, not repeated."""

    def __init__(self, worker: EncoderA):
        self.worker = worker
        artifacts = worker.artifacts
        config = worker.config
        self.tokenizer = WhisperTokenizer(
            artifacts.tokenizer_json, DecoderConfig.load(artifacts.config_json), artifacts.manifest["dims"]["n_vocab"]
        )
        spec = artifacts.feature_spec
        self.spec = spec
        self.pad_frames = int(config.pad_s * spec.frames_per_second)
        self.max_frames = int(config.max_utterance_s * spec.frames_per_second)
        self.overload = OverloadState(OverloadPolicy(budget_s=config.queue_budget_s))
        self.cache = ResultCache(ttl_s=config.cache_ttl_s)
        self._inflight: dict[str, asyncio.Future] = {}
        self.active_sessions = 0
        self.batch_sessions = 0  # of them, class batch
        self.rest_s_per_window_s = 0.0  # encoder B + decoder after this stage, per second of window (split auto)
        self.sessions_started = 0
        self.draining = False
        self.moving_now = False  # draining with every session asked to move at once
        self.drained = asyncio.Event()  # set when draining and the last session left
        self.connections: set = set()  # stream Connections, to send DRAIN to
        self.live_sessions: dict[str, Any] = {}  # session id -> its Connection
        self.session_owners: OrderedDict[str, str] = OrderedDict()  # session id -> device (recent ones)
        self.device_sessions: Counter[str] = Counter()  # device -> live sessions
        self.device_audio: dict[str, TokenBucket] = {}  # device -> its audio rate limit (while it has sessions)
        # EOU -> FINAL latencies (ms) of the last minute: the p99 the ladder and canary guards read
        self.final_ms = SlidingWindow(FINAL_LATENCY_WINDOW_S, max_samples=4096)
        self.finals = 0  # cumulative, for the canary guards: FINALs sent ...
        self.empty_finals = 0  # ... empty ones of utterances that had audio ...
        self.final_errors = 0  # ... and utterances answered with an error
        self.fault = config.fault  # injected (canary/chaos tests), None in production
        self.flag_rules: list[FlagRule] = []  # the pool's feature flags (shared/flags.py), from the coordinator

    def set_flags(self, rules: list[FlagRule]) -> None:
        self.flag_rules = rules
        self.worker.apply_flags(resolve(rules, None))
        log.info("feature flags: %s", [r.model_dump() for r in rules])
        for conn in list(self.connections):  # edges whose flags changed hear so
            conn.spawn(conn.send_edge_flags())

    def edge_flags_for(self, device: str) -> dict:
        return edge_flags(self.flags_for(device))

    def flags_for(self, device: str) -> dict:
        return resolve(self.flag_rules, device)

    def start_drain(self, now: bool = False) -> None:
        """Take no new sessions; move each session off between utterances (``now``: at once, open
        utterances are replayed elsewhere); exit when none is left."""
        if self.draining and (not now or self.moving_now):
            return
        self.draining = True
        self.moving_now = self.moving_now or now
        log.info("draining%s: %d sessions to move", " now" if now else "", self.active_sessions)
        for conn in list(self.connections):
            conn.spawn(conn.drain_now() if now else conn.drain_if_idle())
        self.session_closed()

    def session_closed(self) -> None:
        if self.draining and self.active_sessions == 0:
            self.drained.set()

    def observe_rest(self, seconds: float, rows: int) -> None:
        """The later stages' time for a window of ``rows`` encoder frames: a moving average per window second."""
        sample = seconds * ENCODER_FRAMES_PER_S / max(1, rows)
        previous = self.rest_s_per_window_s
        self.rest_s_per_window_s = sample if not previous else 0.8 * previous + 0.2 * sample

    def load(self) -> dict:
        """The heartbeat's load report."""
        now = time.perf_counter()
        return {
            **self.worker.load(),
            "queue_delay_s": self.overload.window.estimate(now),
            "sessions": self.active_sessions,
            "batch_sessions": self.batch_sessions,
            "final_p50_ms": self.final_ms.quantile(now, 0.5),
            "final_p95_ms": self.final_ms.quantile(now, 0.95),
            "final_p99_ms": self.final_ms.quantile(now, 0.99),
            "sessions_started": self.sessions_started,
            "finals": self.finals,
            "empty_finals": self.empty_finals,
            "final_errors": self.final_errors,
            "overload_level": self.overload.update(now),
        }

    def admit_session(self, active_sessions: int) -> None:
        """Raise :class:`OverloadedError` when this shard must not take another session."""
        capacity = self.worker.config.max_sessions
        if self.draining:
            raise OverloadedError("shard is draining; use another shard", retry_after_ms=0)
        if active_sessions >= capacity:
            raise OverloadedError(f"shard at capacity ({capacity} sessions); try another shard", retry_after_ms=1000)
        if self.overload.update(time.perf_counter()) >= 3:
            delay_ms = self.overload.window.estimate(time.perf_counter()) * 1000
            budget_ms = self.overload.policy.budget_s * 1000
            raise OverloadedError(
                f"shard overloaded (queue delay {delay_ms:.0f} ms, budget {budget_ms:.0f} ms); try another shard",
                retry_after_ms=int(self.overload.policy.window_s * 1000),
            )

    async def recognise(
        self,
        raw: np.ndarray | Windows,
        language: str | None,
        priority: int,
        stale: Callable[[], bool] | None = None,
        key: str | None = None,
        rev: int = FINAL_REV,
    ) -> tuple[str, str, dict, list]:
        """Text, language, timings and the decoder's segments ([start_s, end_s, text] from the first
        frame) of raw log10 mel frames (one utterance or its prefix), or of the windows of an
        utterance whose encoder A runs elsewhere (:class:`Windows`)."""
        if isinstance(raw, Windows):
            return await self._recognise(raw, language, priority, stale, key, rev)
        # the plan is part of the key: a FINAL never takes a partial's single trimmed window
        cache_key = feature_key(raw, language, self.worker.artifacts.version, self.pad_frames, window_choice(priority))
        cached = self.cache.get(cache_key)
        if cached is not None:
            self.worker.metrics.cache_hits.inc()
            return cached[0], cached[1], {**cached[2], "cached": 1.0}, cached[3]
        running = self._inflight.get(cache_key)
        if running is not None and priority == PRIORITY_FINAL:
            try:  # the same frames are already being recognised for a FINAL (a speculative one)
                result = await asyncio.shield(running)
                self.worker.metrics.cache_hits.inc()
                return result
            except Superseded:
                pass  # that partial was dropped: compute it here
        future = asyncio.get_running_loop().create_future()
        self._inflight[cache_key] = future
        try:
            result = await self._recognise(LocalWindows(self, raw), language, priority, stale, key, rev)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # consumed here; joiners get it too
            raise
        finally:
            self._inflight.pop(cache_key, None)
        future.set_result(result)
        self.cache.put(cache_key, result)
        return result

    async def _recognise(
        self, windows: Windows, language: str | None, priority: int, stale, key: str | None, rev: int
    ) -> tuple[str, str, dict, list]:
        """The guard's plan over the stage chain: a FINAL whose trimmed window decodes to a degenerate
        hypothesis is decoded again on the longer window, and, as offline, decoding goes on after the
        last finished segment when the model stopped more than a second before the utterance's end
        (it ends at the speech end, so that is untranscribed speech); a partial takes one window."""
        started = time.perf_counter()
        final = priority == PRIORITY_FINAL
        fps = self.spec.frames_per_second
        timings: dict = {"queue_ms": 0.0, "windows": 0}
        segments, start, n = [], 0, windows.frames
        while start < n:
            tokens, language = await self._window(windows, start, language, priority, stale, key, rev, timings)
            # frames as the unit; a FINAL's utterance counts as cut (its end is the speech end)
            found, following = consume_window(self.tokenizer, list(tokens), start, n, n + 1 if final else n, fps)
            segments += [
                [round(seg.start_s, 2), round(seg.end_s, 2), seg.text.strip()] for seg in found if seg.text.strip()
            ]
            if following >= n or timings["windows"] >= MAX_FINAL_WINDOWS:
                break
            start = following
        self.overload.observe(time.perf_counter(), timings["queue_ms"] / 1000)
        self.worker.metrics.overload_level.set(self.overload.level)
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        return " ".join(seg[2] for seg in segments).strip(), language or "en", timings, segments

    async def _window(
        self,
        windows: Windows,
        start: int,
        language: str | None,
        priority: int,
        stale,
        key: str | None,
        rev: int,
        timings: dict,
    ) -> tuple[tuple[int, ...], str | None]:
        """Tokens kept for the window of frames ``start:`` (the guard's plan: FINALs may retry on a longer window)."""
        modes = plan(window_choice(priority), self.tokenizer.spoken(language))
        audio_s = (windows.frames - start) / self.spec.frames_per_second
        for attempt, mode in enumerate(modes):
            t = time.perf_counter()
            hidden, wait = await windows.encode(start, mode, priority, stale)
            enc_a_ms = (time.perf_counter() - t) * 1000
            meta = {"language": language, "audio_s": audio_s, "key": key, "rev": rev}
            if has_next(modes, attempt):  # the guard retries a loop: the decoder may stop at the first one
                meta["stop_on_loop"] = True
            t = time.perf_counter()
            try:
                res = await self.worker.forward("hidden", hidden, meta, priority, 10_000.0)
            except ProtocolError as exc:
                if exc.code == p.E_SUPERSEDED:
                    raise Superseded(exc.message) from None
                raise
            self.observe_rest(time.perf_counter() - t, hidden.shape[1])
            result = DecodeResult.from_meta(unpack(res.tensors, "tokens", as_float32=False).tolist(), res.meta)
            language = res.meta.get("language") or language
            queue_ms = timings["queue_ms"] + res.timings.get("queue_ms", 0.0) + wait * 1000
            timings.update(res.timings, enc_a_ms=enc_a_ms, queue_ms=queue_ms, windows=timings["windows"] + 1)
            kept = judge(
                result, self.tokenizer.decode(list(result.tokens)), attempt, modes, self.tokenizer.eot, GuardOptions()
            )
            if kept is not None:
                return kept, language
        raise AssertionError("a plan's last window always yields tokens")


class Windows:
    """The encoder-A output of an utterance's windows; :class:`Stage0` asks for the ones it decodes."""

    frames: int  # log-mel frames of the utterance (or of its prefix)

    async def encode(
        self, start: int, mode: WindowMode, priority: int, stale: Callable[[], bool] | None
    ) -> tuple[np.ndarray, float]:
        """Encoder A's output (1, rows, n_state) for the window of frames ``start:``, and its queue wait (s)."""
        raise NotImplementedError


class LocalWindows(Windows):
    """Raw log-mel that the edge sent (split ``features``): encoder A runs on this shard."""

    def __init__(self, stage0: Stage0, raw: np.ndarray):
        self.stage0, self.raw, self.frames = stage0, raw, raw.shape[1]

    async def encode(self, start, mode, priority, stale):
        worker = self.stage0.worker
        mel = window_mel(self.raw[:, start:], mode, self.stage0.spec, worker.config.pad_s)
        started = time.perf_counter()
        hidden, wait = await worker.encode(mel, priority, 10.0, stale)
        worker.observe_window(max(0.0, time.perf_counter() - started - wait), mel.shape[2])
        return hidden, wait
