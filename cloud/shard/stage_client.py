"""Calls a downstream stage over persistent websockets, retrying on another replica on failure."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid

import aiohttp

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
        self.suspect_until = 0.0  # monotonic time until which this replica is tried last (it failed a call)

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

    async def call(self, request: p.StageRequest, timeout_s: float) -> p.StageResponse:
        ws = await self._connect()
        future = asyncio.get_running_loop().create_future()
        self._pending[request.req_id] = future
        try:
            await ws.send_bytes(p.encode(request))
            frame = await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(request.req_id, None)
        if isinstance(frame, p.Error):
            raise ProtocolError(frame.code, frame.message, frame.retryable, frame.retry_after_ms)
        return frame

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class StageClient:
    """Round-robin over replicas of the next stage; a failed call is retried on the next replica."""

    def __init__(self, urls: list[str], timeout_s: float = 30.0, dynamic: bool = False, token: str = ""):
        if not urls and not dynamic:
            raise ValueError("StageClient needs at least one replica url")
        self._token = token  # the cluster's stage credential
        self._urls = [stage_url(u) for u in urls]
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._replicas: list[_Replica] = []
        self._rr = itertools.count()

    async def start(self) -> None:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        # connecting is bounded (a dead or hung replica must not hold a call); calls have their own timeout
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S)
        self._session = aiohttp.ClientSession(headers=headers, timeout=timeout, connector=tls.connector())
        self._replicas = [_Replica(u, self._session) for u in self._urls]

    def set_urls(self, urls: list[str]) -> None:
        """Replace the replica list (from the coordinator); connections to kept replicas stay open."""
        wanted = [stage_url(u) for u in urls]
        if wanted == self._urls or self._session is None:
            return
        current = {r.url: r for r in self._replicas}
        self._replicas = [current.get(u) or _Replica(u, self._session) for u in wanted]
        self._urls = wanted
        for url, replica in current.items():
            if url not in wanted:
                asyncio.get_running_loop().create_task(replica.close())
        log.info("next-stage replicas now %s", wanted)

    def _order(self) -> list[_Replica]:
        """Every replica once, round-robin from the next one; those that failed a call lately go last."""
        first = next(self._rr)
        n = len(self._replicas)
        rotation = [self._replicas[(first + i) % n] for i in range(n)]
        now = time.monotonic()
        return sorted(rotation, key=lambda r: r.suspect_until > now)  # stable: keeps the rotation

    async def close(self) -> None:
        await asyncio.gather(*(r.close() for r in self._replicas), return_exceptions=True)
        if self._session is not None:
            await self._session.close()

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
