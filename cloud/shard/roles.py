"""What each shard role computes: encoder A (stage 0), encoder B, decoder; inference off the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Any

import numpy as np

from splitasr.cloud.shard.config import NEXT_ROLE, ShardConfig
from splitasr.cloud.shard.decode_engine import DecodeEngine, EngineOptions
from splitasr.cloud.shard.decoding import DecodingOptions
from splitasr.cloud.shard.guard import DecodeResult, GuardOptions, judge, plan
from splitasr.cloud.shard.metrics import ShardMetrics
from splitasr.cloud.shard.microbatch import BatchPolicy, MicroBatcher, default_max_batch
from splitasr.cloud.shard.overload import OverloadPolicy, OverloadState, QueueDelayWindow
from splitasr.cloud.shard.recognizer import TextDecoder, consume_window
from splitasr.cloud.shard.result_cache import ResultCache, feature_key
from splitasr.cloud.shard.runtime import RuntimeOptions, StageRuntime, providers
from splitasr.cloud.shard.scheduler import PRIORITY_FINAL, PRIORITY_PARTIAL, PriorityRunner, Superseded
from splitasr.cloud.shard.stage_client import StageClient
from splitasr.cloud.shard.supersession import FINAL_REV, Supersession
from splitasr.cloud.shard.tensors import pack, unpack
from splitasr.cloud.shard.windows import SILENCE_LOG_MEL, window_mel
from splitasr.models.stages import StageArtifacts
from splitasr.models.tokenizer import DecoderConfig, WhisperTokenizer
from splitasr.shared import protocol as p
from splitasr.shared.control import StageMeta, parse
from splitasr.shared.errors import ConfigError, OverloadedError, ProtocolError
from splitasr.shared.limits import TokenBucket

log = logging.getLogger(__name__)

MAX_FINAL_WINDOWS = 6  # decoding passes of one FINAL (guard retries and continuations after a stop)
ONNX_STAGES = {"enc_a": ("enc_a",), "enc_b": ("enc_b",), "dec": ("cross_kv", "dec_step")}


class StageWorker:
    """Loads this shard's ONNX stages and runs them on one worker thread, measuring queue delay.

    Encoder roles run through a :class:`MicroBatcher` (batch size per device, 1 on CPU by default);
    the decoder role runs a :class:`DecodeEngine` (continuous batching across streams).
    """

    def __init__(self, config: ShardConfig, artifacts: StageArtifacts, metrics: ShardMetrics):
        self.config = config
        self.artifacts = artifacts
        self.metrics = metrics
        self.runtime = StageRuntime(
            artifacts,
            RuntimeOptions(threads=config.threads, device=config.device, int8=config.int8),
            stages=ONNX_STAGES[config.role],
        )
        self.supersession = Supersession()
        self.decoder = TextDecoder(self.runtime, artifacts) if config.role == "dec" else None
        self.engine = (
            DecodeEngine(self.decoder, EngineOptions(max_batch=config.max_batch), self.supersession, metrics)
            if self.decoder is not None
            else None
        )
        device = "cuda" if providers(config.device)[0].startswith("CUDA") else "cpu"
        enc_batch = config.encoder_max_batch or default_max_batch(device)
        self.batcher = MicroBatcher(self._run_encoder_batch, BatchPolicy(max_batch=enc_batch))
        self.runner = PriorityRunner(
            f"stage-{config.role}", metrics.queue_seconds.observe, metrics.dropped_partials.inc
        )
        self.client = None
        if config.role in NEXT_ROLE:
            token = config.auth.stage_token() if config.auth else ""
            self.client = StageClient(list(config.next_urls), config.stage_timeout_s, dynamic=True, token=token)
        self.recent_waits = QueueDelayWindow(5.0)

    async def start(self) -> None:
        self.runner.start()
        if self.engine is not None:
            self.engine.start()
        if self.client is not None:
            await self.client.start()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)
        await self.runner.close()

    async def run(
        self, stage: str, fn, *args: Any, priority: int = PRIORITY_FINAL, stale: Callable[[], bool] | None = None
    ) -> tuple[Any, float]:
        """Run ``fn(*args)`` on the stage thread in priority order; returns its result and queue wait (s)."""
        submitted = time.perf_counter()
        started = [submitted]

        def timed():
            started[0] = time.perf_counter()
            out = fn(*args)
            self.metrics.stage_seconds.labels(stage).observe(time.perf_counter() - started[0])
            return out

        out = await self.runner.submit(timed, priority=priority, stale=stale)
        self.recent_waits.add(time.perf_counter(), started[0] - submitted)
        return out, started[0] - submitted

    def load(self) -> dict:
        """Heartbeat load of an encoder B or decoder shard."""
        pending = self.engine.pending() if self.engine is not None else self.runner.pending()
        return {"queue_delay_s": self.recent_waits.estimate(time.perf_counter()), "sessions": pending}

    async def _run_encoder_batch(self, stacked: np.ndarray, priority: int) -> np.ndarray:
        stage = self.config.role
        self.metrics.batch_size.labels(stage).observe(stacked.shape[0])
        (out,), _ = await self.run(stage, self.runtime.run, stage, stacked, priority=priority)
        return out

    async def encode(
        self, array: np.ndarray, priority: int, deadline_s: float, stale: Callable[[], bool] | None = None
    ) -> tuple[np.ndarray, float]:
        """This encoder stage on one request; returns the output and the time it waited (s)."""
        stage = self.config.role
        if self.batcher.policy.max_batch <= 1:
            self.metrics.batch_size.labels(stage).observe(1)
            (out,), wait = await self.run(stage, self.runtime.run, stage, array, priority=priority, stale=stale)
            return out, wait
        started = time.perf_counter()
        out = await self.batcher.submit(array, priority, time.perf_counter() + deadline_s)
        return out, max(0.0, time.perf_counter() - started - self.batcher.service_s)

    def warm_up(self) -> None:
        """One inference of this stage on silence, so the first real request is not slow."""
        dims = self.artifacts.manifest["dims"]
        d, frames = dims["n_state"], 200
        if self.config.role == "enc_a":
            silence = np.full((dims["n_mels"], 100), SILENCE_LOG_MEL, np.float32)
            self.runtime.run("enc_a", window_mel(silence, "trimmed", self.artifacts.feature_spec))
        elif self.config.role == "enc_b":
            self.runtime.run("enc_b", np.zeros((1, frames // 2, d), np.float32))
        else:
            self.decoder.decode(
                np.zeros((1, frames // 2, d), np.float32),
                "en" if not self.decoder.tokenizer.multilingual else None,
                1.0,
                DecodingOptions(),
            )

    async def forward(
        self, hidden_name: str, array: np.ndarray, meta: dict, priority: int, deadline_ms: float
    ) -> p.StageResponse:
        tensors = pack({hidden_name: array}, self.config.activation_dtype)
        return await self.client.call(
            self.config.model, NEXT_ROLE[self.config.role], tensors, meta, deadline_ms, priority
        )

    async def serve_stage(self, request: p.StageRequest) -> p.StageResponse:
        """Answer a STAGE_REQ addressed to this shard (encoder B or decoder)."""
        started = time.perf_counter()
        if request.model != self.config.model or request.stage != self.config.role:
            raise ProtocolError(
                p.E_FIELD,
                f"this shard serves {self.config.model}/{self.config.role}, not {request.model}/{request.stage}",
            )
        try:
            meta = parse(StageMeta, request.meta, "STAGE_REQ.meta")
        except ConfigError as exc:
            raise ProtocolError(p.E_FIELD, str(exc)) from None
        key, rev = meta.key, meta.rev
        self.supersession.note(key, rev)
        try:
            if self.config.role == "enc_b":
                return await self._serve_enc_b(request, key, rev, started)
            if self.config.role == "dec":
                return await self._serve_dec(request, meta, started)
        except Superseded as exc:
            raise ProtocolError(p.E_SUPERSEDED, str(exc)) from None
        raise ProtocolError(p.E_STATE, "stage-0 shards take edge sessions at /v1/stream, not STAGE_REQ")

    async def _serve_enc_b(self, request: p.StageRequest, key: str | None, rev: int, started: float):
        d, ctx = self.artifacts.manifest["dims"]["n_state"], self.artifacts.manifest["dims"]["n_audio_ctx"]
        hidden = unpack(request.tensors, "hidden", expect=(1, (1, ctx), d))
        stale = None
        if request.priority >= PRIORITY_PARTIAL:
            stale = lambda: self.supersession.stale(key, rev)  # noqa: E731
        audio, wait = await self.encode(hidden, request.priority, request.deadline_ms / 1000, stale)
        res = await self.forward("audio", audio, request.meta, request.priority, request.deadline_ms)
        timings = {
            **res.timings,
            "enc_b_ms": (time.perf_counter() - started) * 1000,
            "queue_ms": res.timings.get("queue_ms", 0.0) + wait * 1000,
        }
        return p.StageResponse(req_id=request.req_id, tensors=res.tensors, timings=timings, meta=res.meta)

    async def _serve_dec(self, request: p.StageRequest, meta: StageMeta, started: float):
        d, ctx = self.artifacts.manifest["dims"]["n_state"], self.artifacts.manifest["dims"]["n_audio_ctx"]
        audio = unpack(request.tensors, "audio", expect=(1, (1, ctx), d))
        if meta.language is not None:
            self.decoder.tokenizer.check_language(meta.language)
        result, language, wait = await self.engine.decode(
            audio, meta.language, meta.audio_s, request.priority, meta.key, meta.rev
        )
        return p.StageResponse(
            req_id=request.req_id,
            tensors=pack({"tokens": np.asarray(result.tokens, np.int64)}),
            timings={"dec_ms": (time.perf_counter() - started) * 1000, "queue_ms": wait * 1000},
            meta={"language": language, **result.to_meta()},
        )


class Stage0:
    """The stage-0 side of recognition: encoder A here, the rest of the chain through the stage client.

    Also owns the shard's overload state (fed by the queue delays each request meets) and a cache of
    recent results by feature hash; identical work already in flight is joined, not repeated."""

    def __init__(self, worker: StageWorker):
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
        self.sessions_started = 0
        self.draining = False
        self.drained = asyncio.Event()  # set when draining and the last session left
        self.connections: set = set()  # stream Connections, to send DRAIN to
        self.live_sessions: dict[str, Any] = {}  # session id -> its Connection
        self.session_owners: OrderedDict[str, str] = OrderedDict()  # session id -> device (recent ones)
        self.device_sessions: Counter[str] = Counter()  # device -> live sessions
        self.device_audio: dict[str, TokenBucket] = {}  # device -> its audio rate limit (while it has sessions)
        self.final_ms: deque[float] = deque(maxlen=256)

    def start_drain(self) -> None:
        """Take no new sessions; move each session off between utterances; exit when none is left."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: %d sessions to move", self.active_sessions)
        for conn in list(self.connections):
            conn.spawn(conn.drain_if_idle())
        self.session_closed()

    def session_closed(self) -> None:
        if self.draining and self.active_sessions == 0:
            self.drained.set()

    def load(self) -> dict:
        """The heartbeat's load report."""
        now = time.perf_counter()
        finals = sorted(self.final_ms)
        pick = (lambda q: finals[min(len(finals) - 1, int(q * len(finals)))]) if finals else (lambda q: 0.0)
        return {
            "queue_delay_s": self.overload.window.estimate(now),
            "sessions": self.active_sessions,
            "final_p50_ms": pick(0.5),
            "final_p95_ms": pick(0.95),
            "final_p99_ms": pick(0.99),
            "sessions_started": self.sessions_started,
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
        raw: np.ndarray,
        language: str | None,
        priority: int,
        stale: Callable[[], bool] | None = None,
        key: str | None = None,
        rev: int = FINAL_REV,
    ) -> tuple[str, str, dict]:
        """Text, language and timings of raw log10 mel frames (one utterance or its prefix)."""
        cache_key = feature_key(raw, language, self.worker.artifacts.version, self.pad_frames)
        cached = self.cache.get(cache_key)
        if cached is not None:
            self.worker.metrics.cache_hits.inc()
            return cached[0], cached[1], {**cached[2], "cached": 1.0}
        running = self._inflight.get(cache_key)
        if running is not None and priority == PRIORITY_FINAL:
            try:  # the same frames are already being recognised (a partial that covers them all)
                result = await asyncio.shield(running)
                self.worker.metrics.cache_hits.inc()
                return result
            except Superseded:
                pass  # that partial was dropped: compute it here
        future = asyncio.get_running_loop().create_future()
        self._inflight[cache_key] = future
        try:
            result = await self._recognise(raw, language, priority, stale, key, rev)
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
        self, raw: np.ndarray, language: str | None, priority: int, stale, key: str | None, rev: int
    ) -> tuple[str, str, dict]:
        """The guard's plan over the stage chain: a FINAL whose trimmed window decodes to a degenerate
        hypothesis is decoded again on the longer window, and, as offline, decoding goes on after the
        last finished segment when the model stopped more than a second before the utterance's end
        (it ends at the speech end, so that is untranscribed speech); a partial takes one window."""
        started = time.perf_counter()
        final = priority == PRIORITY_FINAL
        fps = self.spec.frames_per_second
        timings: dict = {"queue_ms": 0.0, "windows": 0}
        texts, start, n = [], 0, raw.shape[1]
        while start < n:
            tokens, language = await self._window(raw[:, start:], language, priority, stale, key, rev, timings)
            # frames as the unit; a FINAL's utterance counts as cut (its end is the speech end)
            found, following = consume_window(self.tokenizer, list(tokens), start, n, n + 1 if final else n, fps)
            texts += [seg.text for seg in found]
            if following >= n or timings["windows"] >= MAX_FINAL_WINDOWS:
                break
            start = following
        self.overload.observe(time.perf_counter(), timings["queue_ms"] / 1000)
        self.worker.metrics.overload_level.set(self.overload.level)
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        return " ".join(texts).strip(), language or "en", timings

    async def _window(
        self, raw: np.ndarray, language: str | None, priority: int, stale, key: str | None, rev: int, timings: dict
    ) -> tuple[tuple[int, ...], str | None]:
        """Tokens kept for one window of raw log-mel (the guard's plan: FINALs may retry on a longer window)."""
        modes = plan("auto" if priority == PRIORITY_FINAL else "trimmed")
        for attempt, mode in enumerate(modes):
            mel = window_mel(raw, mode, self.spec, self.worker.config.pad_s)
            t = time.perf_counter()
            hidden, wait = await self.worker.encode(mel, priority, 10.0, stale)
            enc_a_ms = (time.perf_counter() - t) * 1000
            meta = {"language": language, "audio_s": raw.shape[1] / self.spec.frames_per_second, "key": key, "rev": rev}
            try:
                res = await self.worker.forward("hidden", hidden, meta, priority, 10_000.0)
            except ProtocolError as exc:
                if exc.code == p.E_SUPERSEDED:
                    raise Superseded(exc.message) from None
                raise
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
