"""Typed aiohttp application keys of a shard app, shared by its handlers."""

from __future__ import annotations

import asyncio
import weakref

from aiohttp import web

from splitasr.cloud.shard.config import ShardConfig
from splitasr.cloud.shard.metrics import ShardMetrics
from splitasr.cloud.shard.stage0 import Stage0
from splitasr.cloud.shard.worker import StageWorker

CONFIG = web.AppKey("config", ShardConfig)
METRICS = web.AppKey("metrics", ShardMetrics)
WORKER = web.AppKey("worker", StageWorker)
STAGE0 = web.AppKey("stage0", Stage0)
READY = web.AppKey("ready", asyncio.Event)
SOCKETS = web.AppKey("sockets", weakref.WeakSet)  # open websockets, closed on shutdown


def is_ready(app: web.Application) -> bool:
    return app[READY].is_set()
