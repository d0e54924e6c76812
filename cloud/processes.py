"""Local shard processes: the ``splitasr shard`` command line of a spec, and readiness by ready file.

Shared by every local launcher: the static chains of :mod:`.local_cluster`, the coordinator's
local process backend, and :mod:`.coordinator.launch` (``splitasr up`` as a child process).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from splitasr.shared.auth import ensure_cluster_secret
from splitasr.shared.errors import ProcessStartError

ORPHAN_AFTER_S = 60.0  # a shard started by a coordinator exits after this long without reaching it


@dataclass(frozen=True)
class ShardSpec:
    """What to run: one stage of one model, where, and how."""

    model: str
    stage: str
    zone: str = "local"
    region: str = "local"
    threads: int = 1
    int8: bool = False
    next_urls: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()  # more ``splitasr shard`` flags
    version: str = "default"  # the pool version (``--config-version``)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ShardSpec:
        return cls(**{**d, "next_urls": tuple(d.get("next_urls", ())), "extra_args": tuple(d.get("extra_args", ()))})


def shard_command(
    spec: ShardSpec, ready_file: Path, coordinator_url: str | None = None, shard_id: str | None = None
) -> list[str]:
    """The ``splitasr shard`` command line of a spec. A ready file left by an earlier run in the same
    workdir is removed here, so readiness is never read from a shard that is gone. The shard gets
    the cluster secret through its inherited environment (generated here if this process has none)."""
    ensure_cluster_secret()
    ready_file.unlink(missing_ok=True)
    return [sys.executable, "-m", "splitasr.cli"] + shard_args(spec, ready_file, coordinator_url, shard_id)


def shard_args(
    spec: ShardSpec, ready_file: Path | None, coordinator_url: str | None = None, shard_id: str | None = None
) -> list[str]:
    """The ``splitasr`` arguments of a spec's shard (``--log-level INFO shard …``), the one place the
    command line is built: :func:`shard_command` runs them as a process, the Ray backend's actors
    parse them in their worker (``ready_file`` None: the actor picks its own)."""
    cmd = ["--log-level", "INFO", "shard", "--model", spec.model]
    cmd += ["--stage", spec.stage, "--threads", str(spec.threads)]
    if ready_file is not None:
        cmd += ["--ready-file", str(ready_file)]
    cmd += ["--zone", spec.zone, "--region", spec.region, "--config-version", spec.version]
    if spec.int8:
        cmd.append("--int8")
    for url in spec.next_urls:
        cmd += ["--next", url]
    if coordinator_url:  # a shard the coordinator started exits when it stays away (no orphans) ...
        cmd += ["--coordinator", coordinator_url, "--orphan-after-s", str(ORPHAN_AFTER_S)]
        if spec.stage == "enc_a":  # ... and admits the streams the coordinator routed to it, only
            cmd.append("--require-ticket")
    if shard_id:
        cmd += ["--shard-id", shard_id]
    return cmd + list(spec.extra_args)


def ready_info(proc: subprocess.Popen, ready_file: Path, log_file: Path, what: str) -> dict | None:
    """The ready file's content once ``proc`` wrote it; None while it is starting.

    Raises :class:`ProcessStartError` with the tail of its log if the process exited first."""
    if ready_file.exists():
        return json.loads(ready_file.read_text())
    if proc.poll() is not None:
        tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
        raise ProcessStartError(f"{what} exited ({proc.returncode}) while starting:\n{tail}")
    return None
