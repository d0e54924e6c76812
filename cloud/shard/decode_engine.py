"""The decoder stage's continuous-batching loop: one running batch shared by all streams.

A dedicated thread admits waiting requests between steps (FINAL before PARTIAL before batch, first
come first served within a class), prefills them, and decodes one token for every active sequence
per step. Finished sequences leave at once. A partial superseded by a newer partial or by its FINAL
is dropped, whether it is still waiting or already in the batch; when the batch is full and a FINAL
waits, a running partial is preempted, so finals are never starved. The queue is bounded: past
``max_pending`` new work is refused with a retryable overload error.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from splitasr.cloud.shard.decoding import DecodeBatch, DecodingOptions, Sequence
from splitasr.cloud.shard.guard import DecodeResult, GuardOptions
from splitasr.cloud.shard.recognizer import TextDecoder
from splitasr.cloud.shard.scheduler import PRIORITY_FINAL, PRIORITY_PARTIAL, Superseded
from splitasr.cloud.shard.supersession import Supersession
from splitasr.shared.errors import OverloadedError

log = logging.getLogger(__name__)


@dataclass(order=True)
class DecodeRequest:
    priority: int
    order: int
    audio: np.ndarray = field(compare=False)  # (1, T, d) audio states
    language: str | None = field(compare=False)
    audio_s: float = field(compare=False)
    key: str | None = field(compare=False)
    rev: int = field(compare=False)
    future: asyncio.Future = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)
    submitted: float = field(compare=False)
    admitted: float = field(default=0.0, compare=False)
    stop_on_loop: bool = field(default=False, compare=False)  # the guard retries this window if it loops


@dataclass(frozen=True)
class EngineOptions:
    max_batch: int = 16
    max_pending: int = 256
    decoding: DecodingOptions = field(default_factory=DecodingOptions)


def _settle(future: asyncio.Future, result=None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class DecodeEngine:
    def __init__(
        self,
        decoder: TextDecoder,
        options: EngineOptions = EngineOptions(),
        supersession: Supersession | None = None,
        metrics=None,
        listener: Callable[[DecodeEngine], None] | None = None,
        on_cycle: Callable[[float, float, int], None] | None = None,
    ):
        self.decoder = decoder
        self.options = options
        self.supersession = supersession or Supersession()
        self.metrics = metrics
        self.listener = listener  # called on the engine thread after every cycle (tests, benchmarks)
        self.on_cycle = on_cycle  # (end time, seconds computing, running batch) after every cycle
        self._batch = DecodeBatch(decoder.runtime.dec_step, decoder.rules)
        self._pending: list[DecodeRequest] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="decode-engine", daemon=True)
        self.max_pending_seen = 0
        self.batch_sizes: dict[int, int] = {}

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def pending(self) -> int:
        return len(self._pending)

    def running(self) -> list[DecodeRequest]:
        """Requests in the running batch (a snapshot; call from the listener for a consistent view)."""
        return [s.tag for s in self._batch.seqs]

    async def decode(
        self,
        audio: np.ndarray,
        language: str | None,
        audio_s: float,
        priority: int = PRIORITY_FINAL,
        key: str | None = None,
        rev: int = 0,
        stop_on_loop: bool = False,
    ) -> tuple[DecodeResult, str, float]:
        """Tokens (with guard statistics), language and queue wait (s) of one window of audio states,
        decoded in the shared batch."""
        loop = asyncio.get_running_loop()
        self.supersession.note(key, rev)
        request = DecodeRequest(
            priority,
            next(self._order),
            audio,
            language,
            audio_s,
            key,
            rev,
            loop.create_future(),
            loop,
            time.perf_counter(),
            stop_on_loop=stop_on_loop,
        )
        with self._cond:
            if len(self._pending) >= self.options.max_pending:
                raise OverloadedError(f"decoder queue full ({self.options.max_pending} waiting)", retry_after_ms=500)
            heapq.heappush(self._pending, request)
            self.max_pending_seen = max(self.max_pending_seen, len(self._pending))
            self._gauge()
            self._cond.notify()
        return await request.future

    # -- engine thread ------------------------------------------------------------------------
    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_length.labels("dec").set(len(self._pending))
            self.metrics.queue_length_max.labels("dec").set(self.max_pending_seen)

    def _dead(self, request: DecodeRequest) -> bool:
        if request.future.done():  # the caller went away
            return True
        return request.priority >= PRIORITY_PARTIAL and self.supersession.stale(request.key, request.rev)

    def _fail(self, requests: list[DecodeRequest], why: str) -> None:
        for r in requests:
            r.loop.call_soon_threadsafe(_settle, r.future, None, Superseded(why))
            if self.metrics is not None and r.priority == PRIORITY_PARTIAL:
                self.metrics.dropped_partials.inc()

    def _take(self) -> tuple[list[DecodeRequest], list[DecodeRequest], list[Sequence]]:
        """Under the lock: requests to admit, superseded ones to drop, running partials to preempt."""
        dropped = [r for r in self._pending if self._dead(r)]
        if dropped:
            self._pending = [r for r in self._pending if not self._dead(r)]
            heapq.heapify(self._pending)
        room = self.options.max_batch - len(self._batch)
        preempt: list[Sequence] = []
        waiting_finals = sum(1 for r in self._pending if r.priority == PRIORITY_FINAL)
        if waiting_finals > room:
            running_partials = [s for s in self._batch.seqs if s.tag.priority > PRIORITY_FINAL]
            preempt = sorted(running_partials, key=lambda s: (-s.tag.priority, -s.tag.order))[: waiting_finals - room]
            room += len(preempt)
        admit = [heapq.heappop(self._pending) for _ in range(min(room, len(self._pending)))]
        self._gauge()
        return admit, dropped, preempt

    def _prepare(self, requests: list[DecodeRequest]) -> list[Sequence]:
        """Cross keys/values and a sequence per request; a request that fails here fails alone."""
        seqs = []
        tokenizer = self.decoder.tokenizer
        for r in requests:
            try:
                cross_k, cross_v = self.decoder.runtime.cross_kv(r.audio)
                language = r.language
                if language is None:
                    language = self.decoder.detect_language(cross_k, cross_v)[0] if tokenizer.multilingual else "en"
                    r.language = language
                loop_guard = GuardOptions() if r.stop_on_loop else None
                seq = self.decoder.sequence(cross_k, cross_v, language, r.audio_s, self.options.decoding, r, loop_guard)
            except Exception as exc:  # bad input (shape, values): its own error, the batch goes on
                log.debug("decode request failed before joining the batch: %r", exc)
                r.loop.call_soon_threadsafe(_settle, r.future, None, exc)
                continue
            seqs.append(seq)
            r.admitted = time.perf_counter()
            if self.metrics is not None:
                self.metrics.queue_seconds.observe(r.admitted - r.submitted)
        return seqs

    def _resolve(self, seqs: list[Sequence]) -> None:
        for s in seqs:
            r: DecodeRequest = s.tag
            r.loop.call_soon_threadsafe(_settle, r.future, (s.result(), r.language, r.admitted - r.submitted))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not self._pending and not len(self._batch):
                    self._cond.wait()
                if self._stopped:
                    break
                admit, dropped, preempt = self._take()
            try:
                self._cycle(admit, dropped, preempt)
                if self.listener is not None:
                    self.listener(self)
            except Exception as exc:  # a failed step fails its requests, never the engine
                log.exception("decoder step failed")
                failed = [s.tag for s in self._batch.seqs] + admit
                self._batch.remove(list(self._batch.seqs))
                for r in failed:
                    r.loop.call_soon_threadsafe(_settle, r.future, None, exc)
        failed = [s.tag for s in self._batch.seqs] + self._pending
        for r in failed:
            r.loop.call_soon_threadsafe(_settle, r.future, None, Superseded("decoder shutting down"))

    def _cycle(self, admit: list[DecodeRequest], dropped: list[DecodeRequest], preempt: list[Sequence]) -> None:
        self._fail(dropped, "superseded before it ran")
        gone = [s for s in self._batch.seqs if self._dead(s.tag)]
        self._batch.remove(gone + preempt)
        self._fail([s.tag for s in gone], "superseded while decoding")
        self._fail([s.tag for s in preempt], "preempted by a final")
        started = time.perf_counter()
        if admit:
            self._resolve(self._batch.join(self._prepare(admit)))
        size = len(self._batch)
        if size:
            self._resolve(self._batch.step())
            self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1
            if self.metrics is not None:
                self.metrics.batch_size.labels("dec").observe(size)
                self.metrics.stage_seconds.labels("dec_step").observe(time.perf_counter() - started)
        if self.on_cycle is not None and (admit or size):
            done = time.perf_counter()
            self.on_cycle(done, done - started, size)
