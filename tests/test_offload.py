"""shared/offload.in_thread: an async generator's work on a worker thread, bounded, stoppable."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from splitasr.shared.offload import in_thread


def test_items_arrive_in_order_from_another_thread():
    threads = set()

    async def numbers():
        for i in range(500):
            threads.add(threading.get_ident())
            yield i

    async def main():
        return [x async for x in in_thread(numbers, maxsize=8)]

    assert asyncio.run(main()) == list(range(500))
    assert threading.get_ident() not in threads and len(threads) == 1


def test_the_producers_exception_is_raised_to_the_consumer():
    async def failing():
        yield 1
        raise ValueError("bad audio")

    async def main():
        got = []
        with pytest.raises(ValueError, match="bad audio"):
            async for x in in_thread(failing):
                got.append(x)
        return got

    assert asyncio.run(main()) == [1]


def test_a_consumer_that_stops_stops_the_producer_which_never_runs_far_ahead():
    made = []
    finished = threading.Event()

    async def endless():
        try:
            i = 0
            while True:
                made.append(i)
                yield i
                i += 1
        finally:
            finished.set()

    async def main():
        async with contextlib.aclosing(in_thread(endless, maxsize=4)) as items:
            async for x in items:
                if x == 10:
                    break
        return len(made)

    count = asyncio.run(main())
    assert finished.wait(5), "the producer kept running after the consumer stopped"
    assert count <= 10 + 4 + 2  # the queue's bound, the item in hand and the one being handed over
