"""Test helpers: a real ``splitasr up`` coordinator process and edge agents on a background loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from splitasr.cloud.coordinator import launch
from splitasr.edge.agent import AgentOptions, AgentReport, EdgeAgent
from splitasr.edge.audio_in import file_source

#: long real-speech recordings (several utterances with pauses) for streams under faults
REAL_EN = Path(__file__).resolve().parent.parent / "samples" / "real" / "en"
LONG_REAL = [
    REAL_EN / "en_ljspeech_LJ001-0026_to_0030_concat.flac",  # 35 s
    REAL_EN / "en_librivox_sonnet001_lines02-13.flac",  # 43 s
    REAL_EN / "en_mfa_acoustic_corpus.flac",  # 27 s
]
ADMIN_TOKEN = "test-admin-token"
#: an autoscaler that keeps exactly one replica (no spares, no forecast)
FIXED_ONE = {"min_replicas": 1, "max_replicas": 1, "warm_spares": 0, "predictive": False}
#: one tiny.en int8 pool of one replica per stage
ONE_TINY_POOL = {"pools": [{"model": "tiny.en", "zones": ["a"], "int8": True, "autoscaler": FIXED_ONE}]}


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)  # polling an external process's state


class CoordinatorProcess(launch.CoordinatorProcess):
    """The library's ``splitasr up`` child process, with the admin token the tests use and helpers."""

    def __init__(self, workdir: Path, config: dict):
        super().__init__(config, workdir, admin_token=ADMIN_TOKEN, ready_timeout_s=240)

    def pool(self, model: str = "tiny.en") -> dict:
        return next(p for p in self.get("/v1/pools")["pools"] if p["model"] == model)

    def stage0(self, model: str = "tiny.en") -> list[dict]:
        return [s for s in self.pool(model)["shards"] if s["stage"] == "enc_a"]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "SPLITASR_ADMIN_TOKEN": ADMIN_TOKEN}
        cmd = [sys.executable, "-m", "splitasr.cli", *args, "--coordinator", self.url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


class EdgeStreams:
    """Edge agents on an event loop in a background thread, so a test can watch the cluster meanwhile."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.agents: list[EdgeAgent] = []

    def start(
        self,
        clip: Path,
        coordinator: str,
        zone: str | None = None,
        device_id: str = "edge",
        session_id: str | None = None,
        language: str | None = "en",  # None: detected (language routing)
        **options,
    ) -> concurrent.futures.Future[AgentReport]:
        agent_options = AgentOptions(
            coordinator=coordinator, zone=zone, device_id=device_id, language=language, **options
        )
        agent = EdgeAgent(agent_options)
        if session_id is not None:
            agent.session_id = session_id
        self.agents.append(agent)
        return asyncio.run_coroutine_threadsafe(agent.run(file_source(clip, realtime=True)), self.loop)

    def busiest_shard(self, agents: list[EdgeAgent]) -> str | None:
        """``ws://host:port`` of the shard most of ``agents`` are connected to now."""
        current = [stream_base(a.report.shards[-1]) for a in agents if a.report.shards]
        return max(set(current), key=current.count) if current else None

    def close(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            self.loop.call_soon_threadsafe(task.cancel)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def stream_base(url: str) -> str:
    """``ws://host:port`` of a shard url or an edge's ``ws://host:port/v1/stream``."""
    return url.split("/v1/")[0].rstrip("/")
