"""A shard's link to the coordinator: register, heartbeat every second with load, follow its orders.

The heartbeat answer may tell the shard to drain; the link also refreshes the replica list of the
next stage from ``/v1/route`` (stage-0 and encoder-B shards resolve later stages there).
Coordinator outages are survived: the shard keeps serving and re-registers when it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from splitasr.shared import tls
from splitasr.shared.control import RouteAnswer, parse
from splitasr.shared.errors import ConfigError
from splitasr.shared.flags import FlagRule
from splitasr.shared.limits import Throttle, jittered

log = logging.getLogger(__name__)


class CoordinatorLink:
    def __init__(
        self,
        coordinator_url: str,
        info: dict,
        token: str,  # this shard's credential (shared/auth.py)
        load: Callable[[], dict],
        on_drain: Callable[[], None],
        on_drain_now: Callable[[], None] | None = None,  # stage 0: move every session at once
        on_flags: Callable[[list], None] | None = None,  # the pool's feature flag rules, when they change
        next_stage: tuple[str, str, str] | None = None,  # (model, stage, pool version) to resolve
        on_next_stage: Callable[[list[tuple[str, float]]], None] | None = None,  # (url, queue delay) pairs
        interval_s: float = 1.0,
        orphan_after_s: float = 0.0,  # call on_orphan after this long without reaching the coordinator
        on_orphan: Callable[[], None] | None = None,
    ):
        self.base = coordinator_url.rstrip("/")
        self.info = info
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.load = load
        self.on_drain = on_drain
        self.on_drain_now = on_drain_now or on_drain
        self.on_flags = on_flags
        self.flags_version = 0
        self.next_stage = next_stage
        self.on_next_stage = on_next_stage
        self.interval_s = interval_s
        self.orphan_after_s = orphan_after_s
        self.on_orphan = on_orphan
        self.registered = asyncio.Event()
        self.last_contact = time.monotonic()
        self._complaints = Throttle(30.0)  # an outage is logged every 30 s, not every heartbeat

    async def _register(self, http: aiohttp.ClientSession) -> None:
        async with http.post(f"{self.base}/v1/register", json=self.info, headers=self.headers) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status, message=await resp.text())
        log.info("registered with %s as %s", self.base, self.info["shard_id"])
        self.registered.set()

    async def _heartbeat(self, http: aiohttp.ClientSession) -> None:
        body = {"shard_id": self.info["shard_id"], **self.load(), "flags_version": self.flags_version}
        async with http.post(f"{self.base}/v1/heartbeat", json=body, headers=self.headers) as resp:
            if resp.status == 404:  # the coordinator restarted or dropped us
                await self._register(http)
                return
            answer = await resp.json()
        version = answer.get("flags_version", 0)
        if self.on_flags is not None and isinstance(version, int) and version != self.flags_version:
            rules = [parse(FlagRule, r, "heartbeat flags") for r in answer.get("flags", [])]
            self.on_flags(rules)
            self.flags_version = version
        if answer.get("drain_now"):
            self.on_drain_now()
        elif answer.get("drain"):
            self.on_drain()

    async def _resolve(self, http: aiohttp.ClientSession) -> None:
        model, stage, version = self.next_stage
        params = {"model": model, "stage": stage, "version": version}
        async with http.get(f"{self.base}/v1/route", params=params) as resp:
            if resp.status == 200:
                answer = parse(RouteAnswer, await resp.json(), "route answer")
                replicas = [(c.url, c.queue_delay_s) for c in answer.candidates]
                if replicas:
                    self.on_next_stage(replicas)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=max(2.0, 2 * self.interval_s))
        async with aiohttp.ClientSession(timeout=timeout, connector=tls.connector()) as http:
            while True:
                try:
                    if not self.registered.is_set():
                        await self._register(http)
                    else:
                        await self._heartbeat(http)
                    self.last_contact = time.monotonic()
                    if self.next_stage is not None:
                        await self._resolve(http)
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError, ConfigError) as exc:
                    away = time.monotonic() - self.last_contact
                    if self.orphan_after_s and away > self.orphan_after_s and self.on_orphan is not None:
                        log.error(
                            "coordinator %s unreachable for %.0f s: this shard is an orphan; exiting", self.base, away
                        )
                        self.on_orphan()
                        return
                    if (count := self._complaints.allow()) is not None:
                        log.warning(
                            "coordinator %s unreachable or answering nonsense (%r; %d times); serving on, retrying",
                            self.base,
                            exc,
                            count,
                        )
                await asyncio.sleep(jittered(self.interval_s, spread=0.2))  # the period, never late; no lockstep
