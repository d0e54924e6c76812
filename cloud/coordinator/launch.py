"""``splitasr up`` as a child process: start a coordinator and its pools from Python, stop them by pid.

Used by ``splitasr demo``, the benchmarks and the tests::

    with CoordinatorProcess({"pools": [{"model": "tiny.en"}]}) as cluster:
        print(cluster.url, cluster.get("/v1/pools"))
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from splitasr.cloud.coordinator.state import pid_alive
from splitasr.cloud.processes import ready_info
from splitasr.shared import tls
from splitasr.shared.auth import ensure_cluster_secret
from splitasr.shared.errors import ProcessStartError

log = logging.getLogger(__name__)


class CoordinatorProcess:
    """A coordinator (``splitasr up --config``) with its local shard processes, as a context manager."""

    def __init__(
        self, config: dict, workdir: Path | None = None, admin_token: str = "", ready_timeout_s: float = 300.0
    ):
        self.config = config
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="splitasr-cluster-"))
        self.admin_token = admin_token or config.get("admin_token") or os.urandom(12).hex()
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.orphans: list[int] = []  # shard pids still running after the coordinator stopped
        self.shard_pids: set[int] = set()  # seen in /v1/pools; killed on exit should the coordinator fail to

    @property
    def log_file(self) -> Path:
        return self.workdir / "coordinator.log"

    def start(self) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_file = self.workdir / "cluster.yaml"
        config_file.write_text(yaml.safe_dump({"port": 0, **self.config, "admin_token": self.admin_token}))
        ready = self.workdir / "ready.json"
        ready.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "splitasr.cli", "--log-level", "INFO", "up", "--config", str(config_file)]
        cmd += ["--ready-file", str(ready), "--workdir", str(self.workdir / "shards")]
        with self.log_file.open("ab") as out:
            ensure_cluster_secret()  # inherited by the coordinator and its shards; edges here mint tokens
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.ready_timeout_s
        while (info := ready_info(self.proc, ready, self.log_file, "splitasr up")) is None:
            if time.monotonic() > deadline:
                self.stop()
                raise ProcessStartError(f"cluster not ready after {self.ready_timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.05)  # polling a file another process writes
        self.url = info["url"]
        return self.url

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:] if self.log_file.exists() else ""

    def get(self, path: str) -> dict:
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.admin_token}"})
        with urllib.request.urlopen(request, timeout=10, context=tls.client_context()) as resp:  # as admin
            answer = json.loads(resp.read())
        if path.startswith("/v1/pools"):
            self.shard_pids |= {s["pid"] for p in answer["pools"] for s in p["shards"] if s.get("pid")}
        return answer

    def kill(self) -> None:
        """SIGKILL the coordinator alone (a crash): its shards keep serving, and a coordinator started
        again on the same workdir adopts them (or they exit after ``processes.ORPHAN_AFTER_S``)."""
        if self.proc is not None and self.proc.poll() is None:
            self.get("/v1/pools")  # remember every shard pid, to make sure of them at stop()
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> str:
        """Kill the coordinator and start a new one on the same workdir and state; returns its url."""
        self.kill()
        return self.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM the coordinator (it stops its shards), then make sure every shard pid seen is gone."""
        if self.proc is None:
            return
        if self.url and self.proc.poll() is None:
            try:
                self.get("/v1/pools")
            except OSError as exc:
                log.warning("could not list shards before stopping: %s", exc)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # shards the coordinator should have stopped: counted (the chaos report shows them), then killed
        self.orphans = sorted(pid for pid in self.shard_pids if pid_alive(pid))
        if self.orphans:
            log.warning("shards left running by the coordinator: %s; killing them", self.orphans)
        for pid in self.orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None

    def __enter__(self) -> CoordinatorProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
