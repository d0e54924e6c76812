"""Deadline-aware micro-batching for the encoder stages, with an AIMD-adapted wait (as in Clipper).

A batch of same-shaped requests closes when it is full, when waiting longer would miss the
earliest deadline in it, or after the current max wait. The wait grows additively while batches
finish within the latency budget and halves when one does not.

Whether batching pays is a property of the stage and device: on the 2-core CPU box an encoder
batch of 4 cost 0.92-1.00x the time of 4 single calls per item (``benchmarks/batching.py``,
results in benchmarks/results/batching.json), so CPU encoders default to batches of 1 (no
batching); on CUDA they default to 8.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

ENCODER_DEFAULT_MAX_BATCH = {"cpu": 1, "cuda": 8}


def default_max_batch(device: str) -> int:
    return ENCODER_DEFAULT_MAX_BATCH.get(device, 1)


@dataclass(frozen=True)
class BatchPolicy:
    max_batch: int = 1
    initial_wait_s: float = 0.010
    min_wait_s: float = 0.001
    max_wait_s: float = 0.050
    increase_s: float = 0.001
    decrease: float = 0.5
    budget_s: float = 0.25  # latency a batch may take from its first arrival to its result


def close_batch(
    now: float,
    first_arrival: float,
    earliest_deadline: float,
    size: int,
    wait_s: float,
    service_s: float,
    max_batch: int,
) -> bool:
    """True when the batch should run now: full, waited long enough, or the earliest deadline is near."""
    return size >= max_batch or now - first_arrival >= wait_s or now + service_s >= earliest_deadline


def aimd_wait(wait_s: float, latency_s: float, policy: BatchPolicy) -> float:
    """Next max wait: additive increase within the budget, multiplicative decrease past it."""
    if latency_s > policy.budget_s:
        return max(policy.min_wait_s, wait_s * policy.decrease)
    return min(policy.max_wait_s, wait_s + policy.increase_s)


@dataclass
class _Group:
    first: float
    deadline: float
    priority: int
    items: list[tuple[np.ndarray, asyncio.Future]] = field(default_factory=list)
    full: asyncio.Event = field(default_factory=asyncio.Event)


RunBatch = Callable[[np.ndarray, int], Awaitable[np.ndarray]]


class MicroBatcher:
    """Groups same-shaped requests into one call of ``run_batch(stacked, priority)``."""

    def __init__(self, run_batch: RunBatch, policy: BatchPolicy, clock: Callable[[], float] = time.perf_counter):
        self.run_batch = run_batch
        self.policy = policy
        self.wait_s = policy.initial_wait_s
        self.service_s = 0.0  # recent compute time of a batch (EWMA)
        self._clock = clock
        self._groups: dict[tuple, _Group] = {}
        self.sizes: dict[int, int] = {}

    async def submit(self, array: np.ndarray, priority: int, deadline_s: float) -> np.ndarray:
        """Result row(s) for ``array`` (batch dimension 1); ``deadline_s`` is absolute on the clock."""
        if self.policy.max_batch <= 1:
            return await self.run_batch(array, priority)
        key = array.shape[1:]
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(self._clock(), deadline_s, priority)
            asyncio.create_task(self._close(key, group))
        group.deadline = min(group.deadline, deadline_s)
        group.priority = min(group.priority, priority)
        future = asyncio.get_running_loop().create_future()
        group.items.append((array, future))
        if len(group.items) >= self.policy.max_batch:
            group.full.set()
        return await future

    async def _close(self, key: tuple, group: _Group) -> None:
        while True:
            now = self._clock()
            if close_batch(
                now, group.first, group.deadline, len(group.items), self.wait_s, self.service_s, self.policy.max_batch
            ):
                break
            timeout = min(group.first + self.wait_s, group.deadline - self.service_s) - now
            try:
                await asyncio.wait_for(group.full.wait(), max(timeout, 0.0005))
            except TimeoutError:
                pass
        del self._groups[key]
        items = group.items
        self.sizes[len(items)] = self.sizes.get(len(items), 0) + 1
        started = self._clock()
        try:
            out = await self.run_batch(np.concatenate([a for a, _ in items]), group.priority)
        except Exception as exc:
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        done = self._clock()
        self.service_s = 0.7 * self.service_s + 0.3 * (done - started) if self.service_s else done - started
        self.wait_s = aimd_wait(self.wait_s, done - group.first, self.policy)
        row = 0
        for array, future in items:
            n = array.shape[0]
            if not future.done():
                future.set_result(out[row : row + n])
            row += n
