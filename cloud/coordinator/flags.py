"""The coordinator's feature flags (shared/flags.py): rules per pool, kept in the state store,
pushed to the pool's shards in every heartbeat answer; every change is logged."""

from __future__ import annotations

import json
import logging
import time
from collections import deque

from splitasr.cloud.coordinator.state import StateStore
from splitasr.shared.control import parse
from splitasr.shared.errors import ConfigError
from splitasr.shared.flags import SHARD_WIDE, FlagRule, Flags

log = logging.getLogger(__name__)


class FlagStore:
    def __init__(self, pools: list[str]):
        self.pools = pools
        self.rules: list[FlagRule] = []
        self.version = 0  # bumped at each change (shards apply only a newer set)
        self.changes: deque[dict] = deque(maxlen=200)
        self.state: StateStore | None = None
        self.system: dict[str, Flags] = {}  # the degradation ladder's flags per pool, after the operators' rules

    def restore(self, state: StateStore | None) -> None:
        self.state = state
        raw = state.get("flags") if state is not None else None
        if raw is None:
            return
        saved = json.loads(raw)
        self.rules = [FlagRule.model_validate(r) for r in saved["rules"]]
        self.version = saved["version"]
        self.changes.extend(e for e in state.decisions() if e["event"] == "flags")
        log.info("restored %d flag rules (version %d)", len(self.rules), self.version)

    def set(self, body: dict) -> FlagRule:
        """Add a rule ``{pool, share, set: {...}}``; ConfigError for unknown pools, flags or values."""
        rule = parse(FlagRule, body, "flags")
        if rule.pool not in self.pools:
            raise ConfigError(f"no pool {rule.pool!r}; pools are {', '.join(self.pools)}")
        values = rule.set.set_values()
        if not values:
            raise ConfigError(f"flags: set at least one of {', '.join(Flags.model_fields)}")
        wide = sorted(set(values) & set(SHARD_WIDE))
        if wide and rule.share < 1:
            raise ConfigError(f"flags: {', '.join(wide)} apply to whole shards, not to a share of devices")
        self.rules.append(rule)
        self._changed(rule.pool, f"set {values} for {rule.share:.0%} of devices")
        return rule

    def clear(self, pool: str) -> int:
        if pool not in self.pools:
            raise ConfigError(f"no pool {pool!r}; pools are {', '.join(self.pools)}")
        before = len(self.rules)
        self.rules = [r for r in self.rules if r.pool != pool]
        self._changed(pool, f"cleared {before - len(self.rules)} rules")
        return before - len(self.rules)

    def _changed(self, pool: str, detail: str) -> None:
        self.version += 1
        entry = {"time": time.time(), "pool": pool, "event": "flags", "detail": detail, "version": self.version}
        self.changes.append(entry)
        log.warning("flags of %s (version %d): %s", pool, self.version, detail)
        if self.state is not None:
            rules = [r.model_dump() for r in self.rules]
            self.state.put("flags", json.dumps({"rules": rules, "version": self.version}))
            self.state.add_decision(entry)

    def set_system(self, pool: str, values: dict) -> None:
        """The ladder's flags of ``pool`` (empty: none); they override operators' rules, are not kept."""
        flags = Flags(**values)
        if self.system.get(pool, Flags()) != flags:
            self.system[pool] = flags
            self.version += 1

    def for_pool(self, pool: str) -> list[dict]:
        rules = [r.model_dump() for r in self.rules if r.pool == pool]
        system = self.system.get(pool)
        return rules + ([FlagRule(pool=pool, set=system).model_dump()] if system and system.set_values() else [])

    def status(self) -> dict:
        return {"version": self.version, "rules": [r.model_dump() for r in self.rules], "changes": list(self.changes)}
