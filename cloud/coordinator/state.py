"""The coordinator's own state on disk (SQLite in WAL mode), so that a restarted coordinator picks up
where the last one stopped: the shards it started (adopted again, or stopped), the port the shards
heartbeat to, each pool's pinned size and its recent load history (the autoscaler's forecast
needs it).

One coordinator owns a state file at a time: its pid is recorded, and a second coordinator refuses
a state file whose owner is alive.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path

from splitasr.cloud.processes import ShardSpec
from splitasr.shared.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shards (
    shard_id TEXT PRIMARY KEY, pid INTEGER NOT NULL, spec TEXT NOT NULL, url TEXT, started_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (pool TEXT NOT NULL, t REAL NOT NULL, sample TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS samples_pool_t ON samples (pool, t);
CREATE TABLE IF NOT EXISTS rollouts (pool TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (t REAL NOT NULL, pool TEXT NOT NULL, entry TEXT NOT NULL);
"""
DECISIONS_KEPT = 1000
SAMPLES_KEPT = 3600  # per pool: an hour of one-second samples


def pid_alive(pid: int) -> bool:
    """The process runs (a zombie, dead but not reaped by a parent that is gone too, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc here: the signal check is all there is
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def is_shard_process(pid: int, shard_id: str) -> bool:
    """The process ``pid`` is the shard ``shard_id`` (not another process that reused the pid)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return shard_id.encode() in args and b"shard" in args


class StateStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if fresh:
            os.chmod(self.path, 0o600)  # it holds the cluster secret
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    # -- ownership ------------------------------------------------------------------------------
    def claim(self) -> None:
        """Record this process as the owner; ConfigError if another live coordinator owns the file."""
        owner = self.get("owner_pid")
        if owner is not None and int(owner) != os.getpid() and pid_alive(int(owner)):
            raise ConfigError(f"coordinator state {self.path} belongs to a running coordinator (pid {owner})")
        self.put("owner_pid", str(os.getpid()))

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- shards ---------------------------------------------------------------------------------
    def add_shard(self, shard_id: str, pid: int, spec: ShardSpec, started_at: float, url: str | None = None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO shards (shard_id, pid, spec, url, started_at) VALUES (?, ?, ?, ?, ?)",
            (shard_id, pid, json.dumps(spec.to_dict()), url, started_at),
        )

    def remove_shard(self, shard_id: str) -> None:
        self.db.execute("DELETE FROM shards WHERE shard_id = ?", (shard_id,))

    def shards(self) -> list[tuple[str, int, ShardSpec, str | None]]:
        rows = self.db.execute("SELECT shard_id, pid, spec, url FROM shards ORDER BY started_at").fetchall()
        return [(sid, pid, ShardSpec.from_dict(json.loads(spec)), url) for sid, pid, spec, url in rows]

    # -- pools ----------------------------------------------------------------------------------
    def add_sample(self, pool: str, t: float, sample: dict) -> None:
        self.db.execute("INSERT INTO samples (pool, t, sample) VALUES (?, ?, ?)", (pool, t, json.dumps(sample)))
        self.db.execute(
            "DELETE FROM samples WHERE pool = ? AND t < (SELECT MIN(t) FROM "
            "(SELECT t FROM samples WHERE pool = ? ORDER BY t DESC LIMIT ?))",
            (pool, pool, SAMPLES_KEPT),
        )

    def samples(self, pool: str) -> list[dict]:
        rows = self.db.execute("SELECT sample FROM samples WHERE pool = ? ORDER BY t", (pool,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    # -- rollouts (rollouts.py) -----------------------------------------------------------------
    def put_rollout(self, pool: str, state: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO rollouts (pool, state) VALUES (?, ?)", (pool, json.dumps(state)))

    def rollouts(self) -> list[dict]:
        return [json.loads(r[0]) for r in self.db.execute("SELECT state FROM rollouts ORDER BY pool").fetchall()]

    def add_decision(self, entry: dict) -> None:
        """One entry of the rollout decision log (the newest DECISIONS_KEPT are kept)."""
        self.db.execute(
            "INSERT INTO decisions (t, pool, entry) VALUES (?, ?, ?)", (entry["time"], entry["pool"], json.dumps(entry))
        )
        self.db.execute(
            "DELETE FROM decisions WHERE t < (SELECT MIN(t) FROM (SELECT t FROM decisions ORDER BY t DESC LIMIT ?))",
            (DECISIONS_KEPT,),
        )

    def decisions(self, limit: int = 200) -> list[dict]:
        rows = self.db.execute("SELECT entry FROM decisions ORDER BY t DESC LIMIT ?", (limit,)).fetchall()
        return [json.loads(r[0]) for r in reversed(rows)]

    def close(self) -> None:
        self.db.close()
