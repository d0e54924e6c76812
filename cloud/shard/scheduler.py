"""Runs a shard's blocking inference jobs on one worker thread, most urgent first.

Priorities: 0 FINAL, 1 PARTIAL, 2 batch. Among equals, first come first served. A job whose
``stale()`` turns true while it waits (a partial superseded by its utterance's FINAL) is dropped
before it runs.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from splitasr.shared.errors import SplitASRError

PRIORITY_FINAL, PRIORITY_PARTIAL, PRIORITY_BATCH = 0, 1, 2


class Superseded(SplitASRError):
    """The job became stale before it ran (e.g. a partial overtaken by its FINAL)."""


@dataclass(order=True)
class _Job:
    priority: int
    order: int
    submitted: float = field(compare=False)
    fn: Callable[..., Any] = field(compare=False)
    args: tuple = field(compare=False)
    future: asyncio.Future = field(compare=False)
    stale: Callable[[], bool] | None = field(compare=False)


class PriorityRunner:
    def __init__(
        self,
        name: str = "stage",
        on_queue_delay: Callable[[float], None] | None = None,
        on_dropped: Callable[[], None] | None = None,
    ):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queue: asyncio.PriorityQueue[_Job] = asyncio.PriorityQueue()
        self._order = itertools.count()
        self._on_queue_delay = on_queue_delay
        self._on_dropped = on_dropped
        self._consumer: asyncio.Task | None = None

    def start(self) -> None:
        self._consumer = asyncio.create_task(self._consume())

    async def close(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def pending(self) -> int:
        return self._queue.qsize()

    async def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        priority: int = PRIORITY_FINAL,
        stale: Callable[[], bool] | None = None,
    ) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(priority, next(self._order), time.perf_counter(), fn, args, future, stale))
        return await future

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            if job.future.cancelled():
                continue
            if job.stale is not None and job.stale():
                job.future.set_exception(Superseded("superseded before it ran"))
                if self._on_dropped:
                    self._on_dropped()
                continue
            if self._on_queue_delay:
                self._on_queue_delay(time.perf_counter() - job.submitted)
            try:
                result = await loop.run_in_executor(self._pool, job.fn, *job.args)
            except Exception as exc:  # handed to the waiting caller, who knows what it means
                if not job.future.done():
                    job.future.set_exception(exc)
                continue
            if not job.future.done():
                job.future.set_result(result)
