"""What every shard role shares: its ONNX stages on one worker thread, the link to the next stage,
load reports (queue delay, busy fraction, occupancy) and draining.

The roles themselves (encoder A, encoder B, decoder) are the subclasses in :mod:`.roles`, chosen
once when the shard starts (:func:`splitasr.cloud.shard.roles.make_worker`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from splitasr.cloud.shard.config import NEXT_ROLE, ShardConfig
from splitasr.cloud.shard.metrics import ShardMetrics
from splitasr.cloud.shard.overload import SlidingWindow
from splitasr.cloud.shard.runtime import RuntimeOptions, StageRuntime
from splitasr.cloud.shard.scheduler import PRIORITY_FINAL, PriorityRunner, Superseded
from splitasr.cloud.shard.stage_client import StageClient
from splitasr.cloud.shard.supersession import Supersession
from splitasr.cloud.shard.tensors import pack
from splitasr.cloud.shard.utilisation import Utilisation
from splitasr.models.stages import StageArtifacts
from splitasr.shared import protocol as p
from splitasr.shared.control import StageMeta, parse
from splitasr.shared.errors import ConfigError, ProtocolError

log = logging.getLogger(__name__)

DRAIN_GRACE_HEARTBEATS = 3  # a draining stage waits this many heartbeats (every upstream re-resolves) ...


class StageWorker:
    """Base of the shard roles. Subclasses set ``role`` and ``onnx_stages`` and implement
    :meth:`warm_up` and :meth:`_serve` (a STAGE_REQ, for the roles after stage 0)."""

    role: ClassVar[str]
    onnx_stages: ClassVar[tuple[str, ...]]

    def __init__(self, config: ShardConfig, artifacts: StageArtifacts, metrics: ShardMetrics):
        if config.role != self.role:
            raise ConfigError(f"a {type(self).__name__} serves {self.role}, not {config.role}")
        self.config = config
        self.artifacts = artifacts
        self.metrics = metrics
        self.runtime = StageRuntime(
            artifacts,
            RuntimeOptions(threads=config.threads, device=config.device, int8=config.int8),
            stages=self.onnx_stages,
        )
        self.supersession = Supersession()
        self.runner = PriorityRunner(f"stage-{self.role}", metrics.queue_seconds.observe, metrics.dropped_partials.inc)
        self.client = None
        if self.role in NEXT_ROLE:
            token = config.auth.stage_token() if config.auth else ""
            self.client = StageClient(list(config.next_urls), config.stage_timeout_s, dynamic=True, token=token)
        self.recent_waits = SlidingWindow(5.0)
        self.utilisation = Utilisation(5.0)
        self.inflight = 0  # STAGE_REQs being answered
        self.draining = False
        self.drained = asyncio.Event()  # set once a draining shard holds no work: it may exit
        self._grace: asyncio.TimerHandle | None = None  # the drain's grace period, while it runs

    @property
    def dims(self) -> dict:
        return self.artifacts.manifest["dims"]

    async def start(self) -> None:
        self.runner.start()
        if self.client is not None:
            await self.client.start()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        await self.runner.close()

    def warm_up(self) -> None:
        """One inference of this stage on silence, so the first real request is not slow."""
        raise NotImplementedError

    async def run(
        self, stage: str, fn, *args: Any, priority: int = PRIORITY_FINAL, stale: Callable[[], bool] | None = None
    ) -> tuple[Any, float]:
        """Run ``fn(*args)`` on the stage thread in priority order; returns its result and queue wait (s)."""
        submitted = time.perf_counter()
        started = [submitted]

        def timed():
            started[0] = time.perf_counter()
            out = fn(*args)
            done = time.perf_counter()
            self.metrics.stage_seconds.labels(stage).observe(done - started[0])
            self.utilisation.add(done, done - started[0])
            return out

        out = await self.runner.submit(timed, priority=priority, stale=stale)
        self.recent_waits.add(time.perf_counter(), started[0] - submitted)
        return out, started[0] - submitted

    def pending(self) -> int:
        return self.runner.pending()

    def load(self) -> dict:
        """The heartbeat's load report of this stage."""
        now = time.perf_counter()
        return {
            "queue_delay_s": self.recent_waits.estimate(now),
            "sessions": self.pending(),
            "busy": round(self.utilisation.busy(now), 4),
            "occupancy": round(self.utilisation.occupancy(now), 4),
            "requests": self.utilisation.requests,
        }

    async def forward(
        self, hidden_name: str, array: np.ndarray, meta: dict, priority: int, deadline_ms: float
    ) -> p.StageResponse:
        """Call the next stage (one of its replicas) with ``array``."""
        tensors = pack({hidden_name: array}, self.config.activation_dtype)
        return await self.client.call(self.config.model, NEXT_ROLE[self.role], tensors, meta, deadline_ms, priority)

    # -- STAGE_REQ ------------------------------------------------------------------------------
    async def serve_stage(self, request: p.StageRequest) -> p.StageResponse:
        """Answer a STAGE_REQ addressed to this shard."""
        started = time.perf_counter()
        if request.model != self.config.model or request.stage != self.role:
            raise ProtocolError(
                p.E_FIELD, f"this shard serves {self.config.model}/{self.role}, not {request.model}/{request.stage}"
            )
        try:
            meta = parse(StageMeta, request.meta, "STAGE_REQ.meta")
        except ConfigError as exc:
            raise ProtocolError(p.E_FIELD, str(exc)) from None
        self.supersession.note(meta.key, meta.rev)
        self.inflight += 1
        self.utilisation.requests += 1
        self.metrics.stage_requests.inc()
        try:
            return await self._serve(request, meta, started)
        except Superseded as exc:
            raise ProtocolError(p.E_SUPERSEDED, str(exc)) from None
        finally:
            self.inflight -= 1
            self._check_drained()

    async def _serve(self, request: p.StageRequest, meta: StageMeta, started: float) -> p.StageResponse:
        raise ProtocolError(p.E_STATE, "stage-0 shards take edge sessions at /v1/stream, not STAGE_REQ")

    # -- draining (encoder B and decoder; stage 0 drains its sessions, see Stage0) ----------------
    def apply_flags(self, values: dict) -> None:
        """Shard-wide feature flags (shared/flags.py) this stage uses; the base class uses none."""

    def start_drain(self) -> None:
        """Told by the coordinator: finish what this shard holds, then exit. Upstream shards stop
        sending within a heartbeat (a draining replica leaves the route answers); the shard waits a
        few heartbeats for that, then exits as soon as nothing is in flight."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: %d requests in flight", self.inflight)
        self._grace = asyncio.get_running_loop().call_later(
            DRAIN_GRACE_HEARTBEATS * self.config.heartbeat_s, self._grace_over
        )

    def _grace_over(self) -> None:
        self._grace = None
        self._check_drained()

    def _check_drained(self) -> None:
        if self.draining and self._grace is None and self.inflight == 0:
            self.drained.set()
