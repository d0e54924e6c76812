"""Calls a downstream stage over persistent websockets, retrying on another replica on failure.

Each request picks its replica by power of two choices on (this client's calls in flight to it,
the queue delay the replica last reported to the coordinator); replicas that failed a call lately
go last. The replica list comes from the coordinator every heartbeat; a replica that leaves
it (draining, breaker open) is closed once the calls it holds have their answers."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid

import aiohttp

from splitasr.cloud.coordinator.router import delay_bucket, p2c_order
from splitasr.shared import protocol as p
from splitasr.shared import tls
from splitasr.shared.errors import ProtocolError, StageUnavailableError

log = logging.getLogger(__name__)

STAGE_PATH = "/v1/stage"
CONNECT_TIMEOUT_S = 3.0


def stage_url(url: str) -> str:
    return url if url.rstrip("/").endswith(STAGE_PATH) else url.rstrip("/") + STAGE_PATH


class _Replica:
    """One websocket to one replica; many requests in flight, matched by request id."""

    def __init__(self, url: str, session: aiohttp.ClientSession):
        self.url = url
        self._session = session
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None
        self._pending: dict[str, asyncio.Future] = {}
        self._lock = asyncio.Lock()
        self._idle = asyncio.Event()  # set while no call is in flight
        self._idle.set()
        self.suspect_until = 0.0  # monotonic time until which this replica is tried last (it failed a call)
        self.queue_delay_s = 0.0  # as last reported to the coordinator

    def load(self) -> tuple[int, int]:
        """Calls in flight from this client first (fresh, exact), then the reported queue delay (a
        heartbeat old, a 5 s mean: ranking by it first sent every call to whichever replica had
        reported least until its next heartbeat, and starved the others)."""
        return len(self._pending), delay_bucket(self.queue_delay_s)

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        async with self._lock:
            if self._ws is None or self._ws.closed:
                # a hung replica accepts TCP from its kernel backlog but never upgrades: bound the handshake;
                # once open, a replica silent for 1.5 heartbeats is dropped and its calls fail over
                connect = self._session.ws_connect(
                    self.url, max_msg_size=p.MAX_STAGE_FRAME_BYTES, heartbeat=p.HEARTBEAT_S
                )
                self._ws = await asyncio.wait_for(connect, p.HANDSHAKE_TIMEOUT_S)
                self._reader = asyncio.create_task(self._read(self._ws))
            return self._ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                frame = p.decode(msg.data, max_bytes=p.MAX_STAGE_FRAME_BYTES)
                future = self._pending.pop(getattr(frame, "req_id", None) or "", None)
                if future is not None and not future.done():
                    future.set_result(frame)
        except (aiohttp.ClientError, ProtocolError, asyncio.CancelledError) as exc:
            log.debug("replica %s reader stopped: %r", self.url, exc)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(StageUnavailableError(f"connection to {self.url} lost"))
            self._pending.clear()
            self._idle.set()

    async def call(self, request: p.StageRequest, timeout_s: float) -> p.StageResponse:
        ws = await self._connect()
        future = asyncio.get_running_loop().create_future()
        self._pending[request.req_id] = future
        self._idle.clear()
        try:
            await ws.send_bytes(p.encode(request))
            frame = await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(request.req_id, None)
            if not self._pending:
                self._idle.set()
        if isinstance(frame, p.Error):
            raise ProtocolError(frame.code, frame.message, frame.retryable, frame.retry_after_ms)
        return frame

    async def retire(self) -> None:
        """Close once the calls in flight have their answers (the replica left the list)."""
        await self._idle.wait()
        await self.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class StageCaller:
    """What a stage calls the next one through: :meth:`call` makes the STAGE_REQ, :meth:`send`
    delivers it (over the network: :class:`StageClient`; in this process: ``local_chain``)."""

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def call(
        self,
        model: str,
        stage: str,
        tensors: dict,
        meta: dict | None = None,
        deadline_ms: float = 10_000.0,
        priority: int = 0,
    ) -> p.StageResponse:
        request = p.StageRequest(
            req_id=uuid.uuid4().hex,
            model=model,
            stage=stage,
            deadline_ms=deadline_ms,
            tensors=tensors,
            priority=priority,
            meta=meta or {},
        )
        return await self.send(request)

    async def send(self, request: p.StageRequest) -> p.StageResponse:
        raise NotImplementedError


class StageClient(StageCaller):
    """Replicas of the next stage, one picked per call; a failed call is retried on another replica."""

    def __init__(self, urls: list[str], timeout_s: float = 30.0, dynamic: bool = False, token: str = ""):
        if not urls and not dynamic:
            raise ValueError("StageClient needs at least one replica url")
        self._token = token  # the cluster's stage credential
        self._urls = [stage_url(u) for u in urls]
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._replicas: list[_Replica] = []
        self._rng = random.Random()
        self._retiring: set[asyncio.Task] = set()

    async def start(self) -> None:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        # connecting is bounded (a dead or hung replica must not hold a call); calls have their own timeout
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S)
        self._session = aiohttp.ClientSession(headers=headers, timeout=timeout, connector=tls.connector())
        self._replicas = [_Replica(u, self._session) for u in self._urls]

    def set_replicas(self, replicas: list[tuple[str, float]]) -> None:
        """Replace the replica list with (url, reported queue delay) pairs from the coordinator.
        Connections to kept replicas stay open; dropped ones close once their calls are answered."""
        if self._session is None:
            return
        delays = {stage_url(u): d for u, d in replicas}
        current = {r.url: r for r in self._replicas}
        self._replicas = [current.get(u) or _Replica(u, self._session) for u in delays]
        for replica in self._replicas:
            replica.queue_delay_s = delays[replica.url]
        if list(delays) != self._urls:
            log.info("next-stage replicas now %s", list(delays))
        self._urls = list(delays)
        for url, replica in current.items():
            if url not in delays:
                task = asyncio.get_running_loop().create_task(replica.retire())
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)

    def _order(self) -> list[_Replica]:
        """Every replica once: power of two choices by load, those that failed a call lately last."""
        now = time.monotonic()
        healthy = [r for r in self._replicas if r.suspect_until <= now]
        suspects = [r for r in self._replicas if r.suspect_until > now]
        return p2c_order(healthy, _Replica.load, self._rng) + suspects

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*(r.close() for r in self._replicas), return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def send(self, request: p.StageRequest) -> p.StageResponse:
        stage = request.stage
        if not self._replicas:
            raise StageUnavailableError(f"no replica of stage {stage} is known yet")
        errors = []
        for replica in self._order():
            try:
                return await replica.call(request, self._timeout_s)
            except ProtocolError as exc:
                if not exc.retryable:
                    raise
                errors.append(f"{replica.url}: {exc}")
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, StageUnavailableError) as exc:
                errors.append(f"{replica.url}: {exc!r}")
                replica.suspect_until = time.monotonic() + p.SUSPECT_S
            log.warning("stage %s call failed on %s; trying another replica", stage, replica.url)
        raise StageUnavailableError(f"no replica of stage {stage} answered: {'; '.join(errors)}")
