"""Test helpers: a real ``splitasr up`` coordinator process and edge agents on a background loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from splitasr.edge.agent import AgentOptions, AgentReport, EdgeAgent
from splitasr.edge.audio_in import file_source

ADMIN_TOKEN = "test-admin-token"


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


class CoordinatorProcess:
    """``splitasr up --config`` as a child process, with its shards; stops all of them by pid."""

    def __init__(self, workdir: Path, config: dict):
        self.workdir = workdir
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.shard_pids: set[int] = set()

    def __enter__(self) -> CoordinatorProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_file = self.workdir / "cluster.yaml"
        config_file.write_text(yaml.safe_dump({"port": 0, "admin_token": ADMIN_TOKEN, **self.config}))
        ready = self.workdir / "ready.json"
        cmd = [sys.executable, "-m", "splitasr.cli", "--log-level", "INFO", "up", "--config", str(config_file)]
        cmd += ["--ready-file", str(ready), "--workdir", str(self.workdir / "shards")]
        log = (self.workdir / "coordinator.log").open("wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_until(lambda: ready.exists() or self.proc.poll() is not None, 240, "the cluster to be ready")
            if self.proc.poll() is not None:
                raise RuntimeError(f"splitasr up exited: {self.log_tail()}")
            self.url = json.loads(ready.read_text())["url"]
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def log_tail(self, chars: int = 3000) -> str:
        return (self.workdir / "coordinator.log").read_text(errors="replace")[-chars:]

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            return json.loads(resp.read())

    def pool(self, model: str = "tiny.en") -> dict:
        pool = next(p for p in self.get("/v1/pools")["pools"] if p["model"] == model)
        self.shard_pids |= {s["pid"] for s in pool["shards"] if s.get("pid")}
        return pool

    def stage0(self, model: str = "tiny.en") -> list[dict]:
        return [s for s in self.pool(model)["shards"] if s["stage"] == "enc_a"]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "SPLITASR_ADMIN_TOKEN": ADMIN_TOKEN}
        cmd = [sys.executable, "-m", "splitasr.cli", *args, "--coordinator", self.url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        if self.url:
            try:
                self.pool()
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.shard_pids:  # the coordinator stops its shards; make sure of it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class EdgeStreams:
    """Edge agents on an event loop in a background thread, so a test can watch the cluster meanwhile."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.agents: list[EdgeAgent] = []

    def start(
        self, clip: Path, coordinator: str, zone: str | None = None, device_id: str = "edge", **options
    ) -> concurrent.futures.Future[AgentReport]:
        agent_options = AgentOptions(coordinator=coordinator, zone=zone, device_id=device_id, language="en", **options)
        agent = EdgeAgent(agent_options)
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
