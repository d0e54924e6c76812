"""Stage scheduling: FINAL work runs before waiting PARTIAL work; superseded partials never run."""

from __future__ import annotations

import asyncio
import threading

import pytest

from splitasr.cloud.shard.scheduler import PRIORITY_FINAL, PRIORITY_PARTIAL, PriorityRunner, Superseded


def test_finals_overtake_partials_and_stale_partials_are_dropped():
    async def main():
        dropped = []
        runner = PriorityRunner("t", on_dropped=lambda: dropped.append(1))
        runner.start()
        gate, started = threading.Event(), threading.Event()
        ran: list[str] = []

        def blocker():
            started.set()
            gate.wait(10)
            ran.append("blocker")

        def job(name):
            ran.append(name)
            return name

        ended = {"u1": False}
        first = asyncio.create_task(runner.submit(blocker, priority=PRIORITY_PARTIAL))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        partials = [
            asyncio.create_task(runner.submit(job, f"partial-{i}", priority=PRIORITY_PARTIAL)) for i in range(3)
        ]
        stale = asyncio.create_task(runner.submit(job, "stale", priority=PRIORITY_PARTIAL, stale=lambda: ended["u1"]))
        final = asyncio.create_task(runner.submit(job, "final", priority=PRIORITY_FINAL))
        await asyncio.sleep(0)  # let the submissions enqueue
        assert runner.pending() == 5
        ended["u1"] = True  # the utterance's FINAL arrived: its partial is superseded
        gate.set()
        await asyncio.gather(first, final, *partials)
        with pytest.raises(Superseded):
            await stale
        await runner.close()
        return ran, dropped

    ran, dropped = asyncio.run(main())
    assert ran == ["blocker", "final", "partial-0", "partial-1", "partial-2"]
    assert dropped == [1]


def test_job_errors_reach_the_caller_and_the_runner_goes_on():
    async def main():
        runner = PriorityRunner("t")
        runner.start()

        def boom():
            raise ValueError("bad input")

        with pytest.raises(ValueError, match="bad input"):
            await runner.submit(boom)
        result = await runner.submit(lambda: 42)
        await runner.close()
        return result

    assert asyncio.run(main()) == 42
