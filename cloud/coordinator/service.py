"""The coordinator process: registry, routing, pool controllers and the dashboard over HTTP JSON.

Routes: ``POST /v1/register``, ``POST /v1/heartbeat`` (shards), ``GET /v1/route`` (edges and
shards), ``GET /v1/pools`` and ``GET /v1/rollouts`` (status), ``POST /v1/scale``, ``POST /v1/drain``
and ``POST /v1/rollout`` (admin token),
``GET /metrics`` (Prometheus) and ``GET /ui`` (dashboard).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections import deque
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from splitasr.cloud.coordinator.autoscaler import Decision
from splitasr.cloud.coordinator.backend import Backend
from splitasr.cloud.coordinator.breaker import BreakerConfig, BreakerState
from splitasr.cloud.coordinator.config import SPOT_VERSION, ClusterConfig, PoolConfig, build_checked
from splitasr.cloud.coordinator.controller import PoolController
from splitasr.cloud.coordinator.dashboard import DASHBOARD_HTML
from splitasr.cloud.coordinator.flags import FlagStore
from splitasr.cloud.coordinator.ladder import (
    BATCH_DEFERRED,
    BATCH_SHED,
    FALLBACK,
    LEVELS,
    PARTIALS_OFF,
    SLOWER,
    LadderState,
)
from splitasr.cloud.coordinator.ladder import step as ladder_step
from splitasr.cloud.coordinator.probe import Prober, probe_entries
from splitasr.cloud.coordinator.registry import Registry, ShardInfo, ShardLoad, ShardRecord
from splitasr.cloud.coordinator.rollout import DEFAULT_STEPS, Guards, parse_interval, parse_steps
from splitasr.cloud.coordinator.rollouts import Rollouts
from splitasr.cloud.coordinator.router import RouteRequest, route
from splitasr.shared import tls
from splitasr.shared.auth import ClusterAuth, bearer, ensure_cluster_secret
from splitasr.shared.control import Heartbeat, RouteQuery, parse, parse_query
from splitasr.shared.errors import AuthError, ConfigError, OverloadedError
from splitasr.shared.process_metrics import process_registry
from splitasr.shared.protocol import http_url

log = logging.getLogger(__name__)

PROBE_AFTER_S = 1.5  # a heartbeat later than this (they come every second) gets a /healthz probe


class CoordinatorMetrics:
    def __init__(self) -> None:
        self.registry = process_registry()
        self.shards = Gauge(
            "splitasr_coordinator_shards", "Registered shards", ["pool", "stage", "state"], registry=self.registry
        )
        self.replicas = Gauge(
            "splitasr_pool_replicas", "Routed replicas per stage", ["pool", "stage"], registry=self.registry
        )
        self.desired = Gauge(
            "splitasr_pool_desired_replicas", "Autoscaler decision per stage", ["pool", "stage"], registry=self.registry
        )
        self.routes = Counter("splitasr_routes_total", "Route requests", ["pool", "outcome"], registry=self.registry)
        self.ladder = Gauge("splitasr_ladder_level", "Degradation ladder level", ["pool"], registry=self.registry)
        self.canary_share = Gauge(
            "splitasr_rollout_canary_share", "New sessions' share sent to the canary", ["pool"], registry=self.registry
        )
        self.rollout_events = Counter(
            "splitasr_rollout_events_total", "Rollout decisions", ["pool", "event"], registry=self.registry
        )
        self.replica_seconds = Counter(
            "splitasr_replica_seconds_total",
            "Seconds of running shard processes",
            ["pool", "capacity"],  # on_demand | spot
            registry=self.registry,
        )


class Coordinator:
    def __init__(
        self,
        config: ClusterConfig,
        backend: Backend | None,
        clock=time.monotonic,
        breaker: BreakerConfig | None = None,
        auth: ClusterAuth | None = None,
    ):
        self.config = config
        self.auth = auth or ClusterAuth(ensure_cluster_secret())
        self.backend = backend
        self.clock = clock
        self.registry = Registry(breaker or BreakerConfig())
        self.controllers = {p.model: self._controller(p) for p in config.pools}
        self.spot = {p.model: self._controller(p.spot_pool()) for p in config.pools if p.spot.replicas}
        self.replica_s: dict[str, dict[str, float]] = {p.model: {"on_demand": 0.0, "spot": 0.0} for p in config.pools}
        self._last_tick: float | None = None
        self.flags = FlagStore([p.model for p in config.pools])
        self.ladders = {p.model: LadderState() for p in config.pools}
        self.ladder_log: deque[dict] = deque(maxlen=200)
        self.metrics = CoordinatorMetrics()
        self.rollouts = Rollouts(
            {p.model: p for p in config.pools},
            self.registry,
            self.controllers,
            self._controller,
            clock,
            on_note=lambda e: self.metrics.rollout_events.labels(e["pool"], e["event"]).inc(),
            probers={
                p.model: Prober(probe_entries(p.probe, p.languages, p.probe_clips), self.auth)
                for p in config.pools
                if p.probe
            },
            spot=self.spot,
        )
        self.rng = random.Random()
        self.events: deque[dict] = deque(maxlen=200)  # breaker changes, for status and the dashboard
        self._breaker_seen: dict[str, str] = {}
        self._registered = asyncio.Event()  # set at every registration
        self._loop_task: asyncio.Task | None = None
        self.closing = False  # set by close(): /readyz answers 503 from then on

    def _controller(self, pool: PoolConfig) -> PoolController:
        return PoolController(pool, self.registry, self.backend, self.config.decision_period_s)

    def attach(self, backend: Backend) -> None:
        """Use ``backend`` to start and stop shards; its exit reports open breakers at once. Pool
        versions and rollouts come back from the backend's state store, when it has one."""
        self.backend = backend
        backend.on_exit = self.shard_exited
        for controller in self.controllers.values():
            controller.backend = backend
        self.rollouts.restore(backend.state)
        self.flags.restore(backend.state)
        for controller in self.rollouts.all_controllers():
            controller.backend = backend
            controller.restore()

    def controller_of(self, record: ShardRecord) -> PoolController:
        """The controller of a shard's pool version (the stable one if that version is gone)."""
        found = self.rollouts.version_controller(record.info.model, record.info.config_version)
        return found or self.controllers[record.info.model]

    async def wait_registered(self, shard_ids: set[str], timeout_s: float) -> None:
        """Return once every shard in ``shard_ids`` has registered (raises TimeoutError)."""

        async def all_in() -> None:
            while not shard_ids <= set(self.registry.records):
                self._registered.clear()
                await self._registered.wait()

        await asyncio.wait_for(all_in(), timeout_s)

    def register(self, info: ShardInfo) -> None:
        self.registry.register(info, self.clock())
        self._registered.set()
        log.info("registered %s (%s %s, zone %s) at %s", info.shard_id, info.model, info.stage, info.zone, info.url)

    def shard_exited(self, shard_id: str, code: int) -> None:
        record = self.registry.records.get(shard_id)
        if record is not None:
            record.breaker.trip(self.clock(), f"process exited ({code})")
            self._note_breakers(self.clock())

    def _note_breakers(self, now: float) -> None:
        """Record every breaker state change since the last look as an event (wall-clock time)."""
        seen = {}
        for shard_id, r in self.registry.records.items():
            seen[shard_id] = state = r.breaker.tick(now).value
            if self._breaker_seen.get(shard_id, "closed") != state:
                event = {"time": time.time(), "shard_id": shard_id, "url": r.info.url, "pool": r.info.model}
                self.events.append({**event, "breaker": state, "reason": r.breaker.reason})
                log.warning("shard %s (%s): breaker %s %s", shard_id, r.info.url, state, r.breaker.reason)
        self._breaker_seen = seen

    # -- control loop ---------------------------------------------------------------------------
    def tick(self) -> None:
        now = self.clock()
        for controller in self.rollouts.all_controllers():
            name = controller.stages["enc_a"].key  # the model, or model@version for another version
            decisions = controller.tick(now) if self.backend is not None else {}
            for stage, decision in decisions.items():
                self.metrics.desired.labels(name, stage).set(decision.replicas)
            for stage in controller.stages:
                self.metrics.replicas.labels(name, stage).set(
                    sum(1 for r in controller.live(stage, now) if not r.spare)
                )
        self._count_replica_time(now)
        self._climb_ladders(now)
        self.rollouts.tick(now)
        for model in self.controllers:
            r = self.rollouts.rollouts.get(model)
            self.metrics.canary_share.labels(model).set(r.share if r is not None and r.status == "running" else 0.0)
        # forget shards that drained and went silent
        for r in list(self.registry.records.values()):
            if r.draining and not r.breaker.allows(now):
                self.registry.remove(r.info.shard_id)
        self._note_breakers(now)
        self.metrics.shards.clear()
        for r in self.registry.records.values():
            state = "draining" if r.draining else "spare" if r.spare else r.breaker.tick(now).value
            self.metrics.shards.labels(r.info.model, r.info.stage, state).inc()

    def _count_replica_time(self, now: float) -> None:
        """Replica-seconds of each pool, on-demand and spot (every running shard process counts)."""
        dt, self._last_tick = (0.0 if self._last_tick is None else now - self._last_tick), now
        for controller in self.rollouts.all_controllers():
            kind = "spot" if controller.pool.version == SPOT_VERSION else "on_demand"
            running = sum(1 for r in controller.records() if r.breaker.allows(now))
            self.replica_s[controller.pool.model][kind] += running * dt
            self.metrics.replica_seconds.labels(controller.pool.model, kind).inc(running * dt)

    def cost(self, model: str) -> dict:
        """What a pool's replicas cost so far: replica-seconds by kind, priced per replica-hour."""
        pool, seconds = self.config.pool(model), self.replica_s[model]
        total = seconds["on_demand"] / 3600 * pool.price_per_hour + seconds["spot"] / 3600 * pool.spot.price_per_hour
        return {"replica_s": {k: round(v, 1) for k, v in seconds.items()}, "cost": round(total, 6)}

    def _climb_ladders(self, now: float) -> None:
        """Each pool's degradation ladder (ladder.py) on its stage-0 queue delay and FINAL p99."""
        for model, controller in self.controllers.items():
            routed = [r for r in controller.live("enc_a", now) if not r.spare]
            delay = max((r.load.queue_delay_s for r in routed), default=0.0)
            p99 = max((r.load.final_p99_ms for r in routed), default=0.0)
            before = self.ladders[model]
            after = self.ladders[model] = ladder_step(controller.pool.ladder, before, now, delay, p99)
            self.metrics.ladder.labels(model).set(after.level)
            if after.level == before.level:
                continue
            entry = {"time": time.time(), "pool": model, "event": "ladder", "detail": after.reason}
            self.ladder_log.append(entry)
            log.warning("pool %s: ladder %s", model, after.reason)
            values = {}
            if after.level >= PARTIALS_OFF:
                values["partials"] = False
            elif after.level >= SLOWER:
                values["partial_interval_s"] = controller.pool.ladder.partial_interval_s
            self.flags.set_system(model, values)

    async def probe(self, http: aiohttp.ClientSession) -> None:
        """Probe ``/healthz`` of shards whose heartbeat is late: late and not answering opens the breaker
        (before the heartbeat timeout would)."""
        now = self.clock()
        late = [
            r
            for r in self.registry.records.values()
            if now - r.breaker.last_heartbeat > PROBE_AFTER_S and r.breaker.tick(now) is not BreakerState.OPEN
        ]

        async def one(record: ShardRecord) -> None:
            url = http_url(record.info.url)
            try:
                async with http.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                pass
            record.breaker.trip(self.clock(), "heartbeat late and health probe failed")

        await asyncio.gather(*(one(r) for r in late))

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=min(0.5, self.config.decision_period_s))
        async with aiohttp.ClientSession(timeout=timeout, connector=tls.connector()) as http:
            while True:
                try:
                    self.tick()
                    await self.probe(http)
                except Exception:  # one bad period must not stop the control loop
                    log.exception("coordinator tick failed")
                await asyncio.sleep(self.config.decision_period_s)  # the decision period

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self.run())

    async def close(self) -> None:
        self.closing = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for controller in self.rollouts.all_controllers():
            await controller.close()
        if self.backend is not None:
            await self.backend.close()

    # -- queries --------------------------------------------------------------------------------
    def route(self, query: RouteQuery, device_token: str = "") -> dict:
        """Ordered candidates for a new stream (language, zone, region) or a next stage (model, stage).

        A new stream that names its device and session and presents the device's token gets a route
        ticket with each candidate (:meth:`ClusterAuth.route_ticket`); a bad token is an AuthError."""
        now = self.clock()
        ticketed = bool(query.session and not query.stage)
        if ticketed:
            if not query.device:
                raise ConfigError("route: a session needs its device")
            self.auth.check_device(query.device, device_token)
        if query.stage:
            model, stage = query.model or "", query.stage
            if model not in self.controllers:
                raise ConfigError(f"no pool {model!r}")
            controller = self.rollouts.version_controller(model, query.version)
            if controller is None:
                raise ConfigError(f"pool {model} has no version {query.version!r}")
            choices = [controller]
        else:
            pool = self.config.pool(query.model) if query.model else self.config.pool_for(query.language)
            if query.model and query.language and not pool.serves(query.language):
                raise ConfigError(f"pool {pool.model} does not serve language {query.language!r}")
            if pool is None:
                served = sorted({lang for p in self.config.pools for lang in p.languages})
                raise ConfigError(f"no pool serves language {query.language!r}; served: {', '.join(served)}")
            pool = self._degraded(pool, query)
            model, stage = pool.model, "enc_a"
            chosen = self.rollouts.controller_for_stream(model, query.session, self.rng)
            choices = [chosen] if chosen is self.controllers[model] else [chosen, self.controllers[model]]
            if query.qos == "batch" and model in self.spot:  # batch work on spot first; interactive never
                choices.insert(0, self.spot[model])
        request = RouteRequest(pool=model, zone=query.zone, region=query.region)
        for controller in choices:  # a canary without a shard to offer falls back to stable
            version = controller.pool.version
            ordered = route(self.registry.views(model, stage, now, version), request, self.rng)
            if ordered:
                break
        self.metrics.routes.labels(model, "ok" if ordered else "none").inc()
        if ordered and stage == "enc_a":  # the stream will most likely land on the first candidate
            self.registry.records[ordered[0].shard_id].routed += 1
        return {
            "pool": model,
            "stage": stage,
            "version": version,
            "candidates": [
                {
                    "shard_id": v.shard_id,
                    "url": v.url,
                    "zone": v.zone,
                    "region": v.region,
                    "sessions": v.sessions,
                    "queue_delay_s": v.queue_delay_s,
                }
                | ({"ticket": self.auth.route_ticket(query.device, query.session, v.shard_id)} if ticketed else {})
                for v in ordered
            ],
        }

    def _degraded(self, pool: PoolConfig, query: RouteQuery) -> PoolConfig:
        """The pool a new stream goes to on its pool's ladder: batch deferred or shed, or the fallback model."""
        level, config = self.ladders[pool.model].level, pool.ladder
        if query.qos == "batch" and level >= BATCH_SHED:
            raise OverloadedError(f"pool {pool.model} is shedding batch work (overloaded)", retry_after_ms=0)
        if query.qos == "batch" and level >= BATCH_DEFERRED:
            message = f"pool {pool.model} defers batch work (overloaded); come back later"
            raise OverloadedError(message, retry_after_ms=int(config.defer_s * 1000))
        if level >= FALLBACK and pool.fallback is not None:
            fallback = self.config.pool(pool.fallback)
            if query.language is not None and fallback.serves(query.language):  # no hint: its language is unknown
                return fallback
        return pool

    def pools(self, admin: bool = False) -> dict:
        """Pool status; shard addresses and pids only for ``admin`` callers."""
        now = self.clock()
        out = []
        wall = time.time() - now  # decision times are on the coordinator's clock; show wall time
        for model, c in self.controllers.items():
            shards = self.registry.shards(model)
            stage0 = [r for r in shards if r.info.stage == "enc_a" and not r.draining]
            p50s = [r.load.final_p50_ms for r in stage0 if r.load.final_p50_ms]
            p95s = [r.load.final_p95_ms for r in stage0 if r.load.final_p95_ms]
            p99s = [r.load.final_p99_ms for r in stage0 if r.load.final_p99_ms]
            stages = {stage: _stage_status(c, stage, now, wall) for stage in c.stages}
            out.append(
                {
                    "model": model,
                    "version": c.pool.version,
                    "ladder": {
                        "level": self.ladders[model].level,
                        "name": LEVELS[self.ladders[model].level],
                        "reason": self.ladders[model].reason,
                    },
                    "flags": self.flags.for_pool(model),
                    "cost": self.cost(model),
                    "rollout": self.rollouts.rollouts[model].to_dict() if model in self.rollouts.rollouts else None,
                    "languages": list(c.pool.languages),
                    **stages["enc_a"],  # stage 0's figures at the top, as before every stage scaled
                    "sessions": sum(r.load.sessions for r in stage0),
                    "final_p50_ms": round(sum(p50s) / len(p50s), 1) if p50s else None,
                    "final_p95_ms": round(max(p95s), 1) if p95s else None,
                    "final_p99_ms": round(max(p99s), 1) if p99s else None,
                    "stages": stages,
                    "shards": [_public(r.to_dict(now), admin) for r in shards],
                }
            )
        changes = sorted([*self.rollouts.log, *self.flags.changes, *self.ladder_log], key=lambda e: e["time"])[-50:]
        return {"pools": out, "events": [_public(e, admin) for e in list(self.events)[-50:]], "changes": changes}

    def is_admin(self, request: web.Request) -> bool:
        token = bearer(request.headers).encode("utf-8", "replace")
        return bool(token) and secrets.compare_digest(token, self.config.admin_token.encode())

    def check_admin(self, request: web.Request) -> None:
        if not self.is_admin(request):
            raise web.HTTPUnauthorized(text='{"error": "admin token required"}', content_type="application/json")


ADMIN_ONLY = ("url", "pid")  # where a shard can be reached and which process it is


def _public(shard: dict, admin: bool) -> dict:
    return shard if admin else {k: v for k, v in shard.items() if k not in ADMIN_ONLY}


def _stage_status(c: PoolController, stage: str, now: float, wall: float) -> dict:
    """One stage's pool: replicas, its signals and its recent decisions."""
    pool = c.stages[stage]
    live = c.live(stage, now)
    routed = [r for r in live if not r.spare]
    decisions = list(pool.decisions)[-20:]
    return {
        "replicas": len(routed),
        "spares": len(live) - len(routed),
        "starting": pool.starting,
        "desired": decisions[-1].replicas if decisions else None,
        "pinned": pool.pinned,
        "queue_delay_ms": round(max((r.load.queue_delay_s for r in routed), default=0.0) * 1000, 1),
        "busy": round(sum(r.load.busy for r in routed), 3),
        "occupancy": round(sum(r.load.occupancy for r in routed), 3),
        "cold_start_s": round(pool.config.cold_start_s, 2),
        "measured_cold_starts_s": [round(x, 2) for x in pool.cold_starts[-10:]],
        "decisions": [_decision(d, wall) for d in decisions],
        "scaling": [_decision(d, wall) for d in list(pool.changes)[-20:]],
    }


def _decision(d: Decision, wall_offset: float) -> dict:
    return {"time": round(d.t + wall_offset, 3), "replicas": d.replicas, "reason": d.reason, "panic": d.panic}


COORDINATOR = web.AppKey("coordinator", Coordinator)


def _error(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def _json_body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "body must be JSON"}', content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "body must be a JSON object"}', content_type="application/json")
    return body


async def register(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR]
    try:
        info = parse(ShardInfo, await _json_body(request), "register")
        c.auth.check_shard(info.shard_id, bearer(request.headers))
    except ConfigError as exc:
        return _error(400, str(exc))
    except AuthError as exc:
        log.warning("refused registration of %r from %s: %s", info.shard_id, request.remote, exc)
        return _error(401, str(exc))
    c.register(info)
    return web.json_response({"ok": True, "heartbeat_s": 1.0})


async def heartbeat(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR]
    try:
        beat = parse(Heartbeat, await _json_body(request), "heartbeat")
        c.auth.check_shard(beat.shard_id, bearer(request.headers))
    except ConfigError as exc:
        return _error(400, str(exc))
    except AuthError as exc:
        return _error(401, str(exc))
    load = ShardLoad.model_validate(beat.model_dump(exclude={"shard_id"}))
    record = c.registry.heartbeat(beat.shard_id, load, c.clock())
    if record is None:
        return _error(404, "unknown shard; register again")
    answer = {"ok": True, "drain": record.draining, "drain_now": record.drain_now, "flags_version": c.flags.version}
    if load.flags_version != c.flags.version:  # rules only to a shard that has not applied them yet
        answer["flags"] = c.flags.for_pool(record.info.model)
    return web.json_response(answer)


async def route_handler(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR]
    try:
        answer = c.route(parse_query(RouteQuery, request.query, "route"), bearer(request.headers))
    except ConfigError as exc:
        return _error(400, str(exc))
    except AuthError as exc:
        return _error(401, str(exc))
    except OverloadedError as exc:  # the pool's ladder defers (retry after) or sheds batch work
        return _error(503, str(exc), code="overloaded", retry_after_ms=exc.retry_after_ms)
    if not answer["candidates"]:
        return _error(503, f"no {answer['stage']} shard of pool {answer['pool']} is available", retry_after_ms=1000)
    return web.json_response(answer)


async def pools_handler(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR]
    return web.json_response(c.pools(admin=c.is_admin(request)))


async def scale_handler(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR]
    c.check_admin(request)
    body = await _json_body(request)
    pool, replicas, stage = body.get("pool"), body.get("replicas"), body.get("stage", "enc_a")
    if not isinstance(pool, str) or pool not in c.controllers:
        return _error(404, f"no pool {pool!r}; pools are {', '.join(c.controllers)}")
    controller = c.controllers[pool]
    if not isinstance(stage, str) or stage not in controller.stages:
        return _error(400, f"stage must be one of {', '.join(controller.stages)}, got {stage!r}")
    least = 0 if stage == "enc_a" else 1  # a chain needs every later stage
    if replicas == "auto":
        controller.pin(None, stage)
    elif isinstance(replicas, int) and not isinstance(replicas, bool) and least <= replicas <= 64:
        controller.pin(replicas, stage)
    else:
        return _error(400, f"replicas must be an integer in [{least}, 64] or 'auto', got {replicas!r}")
    c.tick()
    return web.json_response({"ok": True, "pool": pool, "stage": stage, "pinned": controller.stages[stage].pinned})


async def drain_handler(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR]
    c.check_admin(request)
    shard_id = (await _json_body(request)).get("shard_id")
    record = c.registry.records.get(shard_id) if isinstance(shard_id, str) else None
    if record is None:
        return _error(404, f"no shard {shard_id!r}")
    c.controller_of(record).drain(shard_id)
    return web.json_response({"ok": True, "shard_id": shard_id, "sessions": record.load.sessions})


async def rollouts_handler(request: web.Request) -> web.Response:
    return web.json_response(request.app[COORDINATOR].rollouts.status())


async def rollout_handler(request: web.Request) -> web.Response:
    """``POST /v1/rollout`` {pool, action: start|abort|promote, to, steps, interval_s, guards}."""
    c = request.app[COORDINATOR]
    c.check_admin(request)
    body = await _json_body(request)
    pool, action = body.get("pool"), body.get("action")
    try:
        if not isinstance(pool, str) or pool not in c.controllers:
            return _error(404, f"no pool {pool!r}; pools are {', '.join(c.controllers)}")
        if action == "start":
            to = body.get("to")
            if not isinstance(to, str):
                raise ConfigError("rollout start needs `to`: a version of the pool")
            guards = build_checked(Guards, body.get("guards", {}), "guards")
            steps = parse_steps(body.get("steps", list(DEFAULT_STEPS)))
            r = c.rollouts.start(pool, to, steps, parse_interval(body.get("interval_s", 60)), guards)
        elif action == "abort":
            r = c.rollouts.abort(pool)
        elif action == "promote":
            r = c.rollouts.promote(pool)
        else:
            raise ConfigError(f"action must be start, abort or promote, got {action!r}")
    except ConfigError as exc:
        return _error(400, str(exc))
    c.tick()
    return web.json_response({"ok": True, "rollout": r.to_dict()})


async def flags_handler(request: web.Request) -> web.Response:
    return web.json_response(request.app[COORDINATOR].flags.status())


async def set_flags_handler(request: web.Request) -> web.Response:
    """``POST /v1/flags``: {pool, share, set: {flag: value}} adds a rule; {pool, clear: true} drops the pool's."""
    c = request.app[COORDINATOR]
    c.check_admin(request)
    body = await _json_body(request)
    try:
        if body.get("clear") is True:
            cleared = c.flags.clear(body.get("pool") if isinstance(body.get("pool"), str) else "")
            return web.json_response({"ok": True, "cleared": cleared, "version": c.flags.version})
        rule = c.flags.set(body)
    except ConfigError as exc:
        return _error(400, str(exc))
    return web.json_response({"ok": True, "rule": rule.model_dump(), "version": c.flags.version})


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[COORDINATOR].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def ui_handler(request: web.Request) -> web.Response:
    return web.Response(text=DASHBOARD_HTML, content_type="text/html")


STATIC = Path(__file__).resolve().parent / "static"


async def edge_page(request: web.Request) -> web.Response:
    """The browser edge (``static/edge.js``): ``/edge?token=DEVICE_TOKEN[&language=en]``."""
    return web.FileResponse(STATIC / "edge.html")


async def edge_script(request: web.Request) -> web.Response:
    return web.FileResponse(STATIC / "edge.js", headers={"Content-Type": "text/javascript"})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process serves HTTP."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: a backend is attached (shards can register) and the coordinator is not closing.

    Not gated on the pools being up: the shards it starts register through the same address (a
    Kubernetes Service sends nothing to an unready pod), so that would never become ready."""
    c = request.app[COORDINATOR]
    ready = c.backend is not None and not c.closing
    body = {"status": "ready" if ready else "not ready", "control_loop": c._loop_task is not None}
    return web.json_response(body, status=200 if ready else 503)


def create_app(coordinator: Coordinator) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[COORDINATOR] = coordinator
    app.router.add_post("/v1/register", register)
    app.router.add_post("/v1/heartbeat", heartbeat)
    app.router.add_get("/v1/route", route_handler)
    app.router.add_get("/v1/pools", pools_handler)
    app.router.add_post("/v1/scale", scale_handler)
    app.router.add_post("/v1/drain", drain_handler)
    app.router.add_get("/v1/rollouts", rollouts_handler)
    app.router.add_post("/v1/rollout", rollout_handler)
    app.router.add_get("/v1/flags", flags_handler)
    app.router.add_post("/v1/flags", set_flags_handler)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/ui", ui_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    from splitasr.cloud.coordinator.openai_api import add_routes

    add_routes(app, coordinator, coordinator.metrics.registry)
    app.router.add_get("/edge", edge_page)
    app.router.add_get("/edge.js", edge_script)
    return app
