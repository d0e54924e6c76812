"""Backends start, stop and list shard processes for the coordinator.

:class:`Backend` is the interface the controller uses; :class:`LocalProcessBackend` (the embedded
default) runs ``splitasr shard …`` as child processes on this machine, waits for each one's ready
file, measures its cold start, watches for exits and restarts shards that crashed. A Ray or
Kubernetes backend implements the same methods.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from splitasr.cloud.coordinator.state import StateStore, is_shard_process, pid_alive
from splitasr.cloud.processes import ShardSpec, ready_info, shard_command
from splitasr.shared.errors import ProcessStartError

log = logging.getLogger(__name__)


@dataclass
class ShardHandle:
    shard_id: str
    spec: ShardSpec
    started_at: float
    pid: int | None = None
    url: str | None = None
    ready_at: float | None = None
    state: str = "starting"  # starting | ready | stopping | exited
    restarts: int = 0
    info: dict = field(default_factory=dict)

    @property
    def cold_start_s(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.started_at


def new_shard_id(spec: ShardSpec) -> str:
    """The id of a new shard of ``spec`` (a restarted shard keeps its old one)."""
    return f"{spec.model}-{spec.stage}-{uuid.uuid4().hex[:6]}"


class Backend(abc.ABC):
    #: called with (shard id, exit code) when a shard's process is seen to exit; the coordinator
    #: uses it to open that shard's breaker at once instead of waiting for heartbeat silence
    on_exit: Callable[[str, int], None] | None = None
    #: where the coordinator's state survives a restart (None: it does not)
    state: StateStore | None = None

    @abc.abstractmethod
    async def start(self, spec: ShardSpec) -> ShardHandle:
        """Start a shard and return once it is ready (raises :class:`ProcessStartError`)."""

    @abc.abstractmethod
    async def stop(self, shard_id: str, timeout_s: float = 10.0) -> None:
        """Stop a shard (graceful first)."""

    @abc.abstractmethod
    def list(self) -> list[ShardHandle]:
        """Shards this backend started that have not been stopped."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop every shard."""

    @abc.abstractmethod
    def expect_exit(self, shard_id: str) -> None:
        """The shard will exit by itself (it is draining): do not treat that as a crash."""


class AdoptedProcess:
    """A shard process started by an earlier coordinator (not our child): the part of
    :class:`subprocess.Popen` the backend uses, by pid."""

    def __init__(self, pid: int, shard_id: str):
        self.pid = pid
        self.shard_id = shard_id
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not (pid_alive(self.pid) and is_shard_process(self.pid, self.shard_id)):
            self.returncode = -1  # not our child: its exit code is not ours to read
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.05)  # not our child: no wait() to block on
        return self.returncode


@dataclass
class _Process:
    handle: ShardHandle
    proc: subprocess.Popen | AdoptedProcess
    ready_file: Path
    log_file: Path


class LocalProcessBackend(Backend):
    def __init__(
        self,
        coordinator_url: str | None = None,
        workdir: Path | None = None,
        ready_timeout_s: float = 180.0,
        restart_crashed: bool = True,
        state: StateStore | None = None,
    ):
        self.coordinator_url = coordinator_url
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="splitasr-shards-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready_timeout_s = ready_timeout_s
        self.restart_crashed = restart_crashed
        self._procs: dict[str, _Process] = {}
        self._watcher: asyncio.Task | None = None
        self.exits: list[tuple[str, int]] = []  # (shard id, return code) of every exit seen
        self.state = state  # shards started are recorded there, so a restarted coordinator adopts them

    def adopt(self) -> list[ShardHandle]:
        """Take over the shards an earlier coordinator with the same state started and that still run;
        forget the rest. They re-register on their next heartbeat (the coordinator answers 404)."""
        adopted = []
        for shard_id, pid, spec, url in self.state.shards() if self.state else []:
            if not (pid_alive(pid) and is_shard_process(pid, shard_id)):
                self.state.remove_shard(shard_id)
                continue
            handle = ShardHandle(shard_id, spec, time.monotonic(), pid=pid, url=url, state="ready")
            handle.ready_at = handle.started_at
            self._procs[shard_id] = _Process(
                handle,
                AdoptedProcess(pid, shard_id),
                self.workdir / f"{shard_id}.ready.json",
                self.workdir / f"{shard_id}.log",
            )
            adopted.append(handle)
            log.info("adopted shard %s (pid %d, %s %s)", shard_id, pid, spec.model, spec.stage)
        if adopted:
            self._ensure_watcher()
        return adopted

    def _forget(self, shard_id: str) -> None:
        self._procs.pop(shard_id, None)
        if self.state is not None:
            self.state.remove_shard(shard_id)

    def list(self) -> list[ShardHandle]:
        return [p.handle for p in self._procs.values()]

    def log_file(self, shard_id: str) -> Path:
        return self._procs[shard_id].log_file

    async def start(self, spec: ShardSpec, shard_id: str | None = None) -> ShardHandle:
        handle = ShardHandle(shard_id or new_shard_id(spec), spec, started_at=time.monotonic())
        return await self._launch(handle)

    async def _launch(self, handle: ShardHandle) -> ShardHandle:
        ready = self.workdir / f"{handle.shard_id}.ready.json"
        ready.unlink(missing_ok=True)
        log_file = self.workdir / f"{handle.shard_id}.log"
        cmd = shard_command(handle.spec, ready, self.coordinator_url, handle.shard_id)
        with log_file.open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        handle.pid, handle.state, handle.started_at = proc.pid, "starting", time.monotonic()
        self._procs[handle.shard_id] = _Process(handle, proc, ready, log_file)
        if self.state is not None:
            self.state.add_shard(handle.shard_id, proc.pid, handle.spec, time.time())
        self._ensure_watcher()
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                info = ready_info(proc, ready, log_file, f"shard {handle.shard_id}")
            except ProcessStartError:
                self._forget(handle.shard_id)
                raise
            if info is not None:
                break
            if time.monotonic() > deadline:
                await self.stop(handle.shard_id)
                raise ProcessStartError(f"shard {handle.shard_id} not ready after {self.ready_timeout_s} s")
            await asyncio.sleep(0.02)  # polling a file another process writes
        handle.info = info
        handle.url, handle.ready_at, handle.state = handle.info["url"], time.monotonic(), "ready"
        if self.state is not None:
            self.state.add_shard(handle.shard_id, proc.pid, handle.spec, time.time(), handle.url)
        log.info("shard %s ready at %s in %.2f s", handle.shard_id, handle.url, handle.cold_start_s)
        return handle

    async def stop(self, shard_id: str, timeout_s: float = 10.0) -> None:
        entry = self._procs.get(shard_id)
        if entry is None:
            return
        entry.handle.state = "stopping"
        if entry.proc.poll() is None:
            entry.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while entry.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # waiting for a child process to exit
        if entry.proc.poll() is None:
            os.kill(entry.proc.pid, signal.SIGKILL)
            entry.proc.wait()
        entry.handle.state = "exited"
        self._forget(shard_id)

    def expect_exit(self, shard_id: str) -> None:
        if shard_id in self._procs:
            self._procs[shard_id].handle.state = "stopping"

    def _ensure_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while self._procs:
            for shard_id, entry in list(self._procs.items()):
                code = entry.proc.poll()
                if code is None or entry.handle.state == "starting":
                    continue
                self.exits.append((shard_id, code))
                if self.on_exit is not None:
                    self.on_exit(shard_id, code)
                self._forget(shard_id)
                if entry.handle.state == "stopping" or not self.restart_crashed:
                    log.info("shard %s exited (%s)", shard_id, code)
                    entry.handle.state = "exited"
                    continue
                log.warning("shard %s crashed (exit %s); restarting", shard_id, code)
                entry.handle.restarts += 1
                asyncio.get_running_loop().create_task(self._restart(entry.handle))
            await asyncio.sleep(0.2)  # exit polling period

    async def _restart(self, handle: ShardHandle) -> None:
        try:
            await self._launch(handle)
        except ProcessStartError as exc:
            log.error("restart of %s failed: %s", handle.shard_id, exc)

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(shard_id) for shard_id in list(self._procs)))
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
