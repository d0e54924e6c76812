"""Run an async generator's CPU-bound work on a worker thread, with a bounded hand-off.

The coordinator streams API uploads through the edge pipeline (conditioning, Silero VAD, log-mel);
on its own event loop that work would delay the control plane (heartbeats, routes). ``in_thread``
runs the generator in a thread of its own (with its own event loop) and passes items back through
a queue of ``maxsize`` items, so a slow consumer holds the producer back (memory stays bounded) and a
consumer that stops early stops the producer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")
_END = object()
_POLL_S = 0.2  # how often a blocked producer checks whether the consumer went away


async def in_thread(make: Callable[[], AsyncIterator[T]], maxsize: int = 64) -> AsyncIterator[T]:
    """The items of ``make()`` (called on the worker thread), in order; its exception re-raised here."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize)
    stop = threading.Event()

    def hand_over(item) -> bool:
        """Put ``item`` on the consumer's queue; False once the consumer has gone."""
        put = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while True:
            try:
                put.result(timeout=_POLL_S)
                return True
            except concurrent.futures.TimeoutError:
                if stop.is_set():
                    put.cancel()
                    return False

    async def produce() -> None:
        async for item in make():
            if stop.is_set() or not hand_over(item):
                return

    finished = asyncio.Event()

    def run() -> None:
        try:
            asyncio.run(produce())
            end: object = _END
        except BaseException as exc:  # handed to the consumer, raised there
            end = exc
        try:
            if not stop.is_set():
                hand_over(end)
        finally:
            loop.call_soon_threadsafe(finished.set)

    # a thread of its own: the loop's default executor has CPUs + 4 threads, and a producer that
    # its consumer paces holds one for the whole stream
    threading.Thread(target=run, name="offload", daemon=True).start()
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        await finished.wait()
