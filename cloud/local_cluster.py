"""Start a static chain of shard processes per model on this machine and stop them by pid."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from splitasr.cloud.processes import ShardSpec, ready_info, shard_command
from splitasr.shared.errors import ConfigError, ProcessStartError

log = logging.getLogger(__name__)


@dataclass
class ShardProcess:
    model: str
    role: str
    proc: subprocess.Popen
    ready_file: Path
    log_file: Path
    info: dict = field(default_factory=dict)
    reach_url: str = ""  # where the previous stage and edges connect: its url, or a proxy in front of it

    @property
    def url(self) -> str:
        return self.info["url"]

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass(frozen=True)
class ChainSpec:
    """How many replicas of each stage one model's pool gets."""

    model: str
    enc_a: int = 2
    enc_b: int = 1
    dec: int = 1
    threads: int = 1
    int8: bool = False
    shard_args: tuple[str, ...] = ()  # extra ``splitasr shard`` flags for every shard of the chain


class LocalCluster:
    """One chain of stage shards per model as local processes (the embedded default)."""

    def __init__(
        self,
        chains: list[ChainSpec],
        workdir: Path | None = None,
        ready_timeout_s: float = 180.0,
        reach: Callable[[ShardProcess], str] | None = None,
    ):
        """``reach(shard)`` gives the url the previous stage (or the edges) use for a ready shard; by
        default its own (a chaos run puts a fault-injecting proxy there)."""
        if not chains:
            raise ConfigError("a cluster needs at least one model chain")
        self.chains = chains
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="splitasr-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready_timeout_s = ready_timeout_s
        self.reach = reach or (lambda shard: shard.url)
        self.shards: list[ShardProcess] = []

    def _spawn(self, chain: ChainSpec, role: str, index: int, next_urls: list[str]) -> ShardProcess:
        name = f"{chain.model}-{role}-{index}"
        ready = self.workdir / f"{name}.ready.json"
        log_path = self.workdir / f"{name}.log"
        spec = ShardSpec(
            chain.model,
            role,
            threads=chain.threads,
            int8=chain.int8,
            next_urls=tuple(next_urls),
            extra_args=chain.shard_args,
        )
        cmd = shard_command(spec, ready)
        with log_path.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        shard = ShardProcess(chain.model, role, proc, ready, log_path)
        self.shards.append(shard)
        return shard

    def _wait_ready(self, shards: list[ShardProcess]) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        for shard in shards:
            what = f"{shard.model} {shard.role} shard"
            while (info := ready_info(shard.proc, shard.ready_file, shard.log_file, what)) is None:
                if time.monotonic() > deadline:
                    raise ProcessStartError(f"{what} not ready after {self.ready_timeout_s} s")
                time.sleep(0.05)  # polling a ready file written by another process
            shard.info = info
            shard.reach_url = self.reach(shard)

    def start(self) -> LocalCluster:
        """Start decoder, then encoder B, then stage-0 replicas of every chain; wait until all are ready."""
        from splitasr.models.stages import ensure_stages

        try:
            for chain in self.chains:  # export once here, not in every shard at the same time
                ensure_stages(chain.model, int8=chain.int8, show_progress=sys.stderr.isatty())
            for chain in self.chains:
                decs = [self._spawn(chain, "dec", i, []) for i in range(chain.dec)]
                self._wait_ready(decs)
                enc_bs = [self._spawn(chain, "enc_b", i, [s.reach_url for s in decs]) for i in range(chain.enc_b)]
                self._wait_ready(enc_bs)
                stage0 = [self._spawn(chain, "enc_a", i, [s.reach_url for s in enc_bs]) for i in range(chain.enc_a)]
                self._wait_ready(stage0)
        except BaseException:
            self.stop()
            raise
        return self

    def stage0_urls(self, model: str) -> list[str]:
        return [s.reach_url for s in self.shards if s.model == model and s.role == "enc_a" and s.proc.poll() is None]

    def describe(self) -> list[dict]:
        return [
            {"model": s.model, "role": s.role, "pid": s.pid, "url": s.info.get("url"), "log": str(s.log_file)}
            for s in self.shards
        ]

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every shard by pid, then SIGKILL what is left after ``timeout_s``."""
        for shard in self.shards:
            if shard.proc.poll() is None:
                shard.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for shard in self.shards:
            try:
                shard.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(shard.pid, signal.SIGKILL)
                shard.proc.wait()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
