"""Per-shard circuit breaker: closed -> open (failures or heartbeat silence) -> half-open probe -> closed."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 3  # consecutive failures that open the breaker
    heartbeat_timeout_s: float = 2.0  # silence that opens it
    open_for_s: float = 5.0  # then one probe is allowed (half-open)


@dataclass
class Breaker:
    """State machine driven by explicit times (a fake clock in tests)."""

    config: BreakerConfig = field(default_factory=BreakerConfig)
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    last_heartbeat: float = 0.0
    reason: str = ""

    def heartbeat(self, now: float) -> None:
        self.last_heartbeat = now
        if self.state is BreakerState.OPEN and self.reason == "heartbeat silence":
            self.state = BreakerState.HALF_OPEN

    def success(self, now: float) -> None:
        self.failures = 0
        self.state = BreakerState.CLOSED
        self.reason = ""

    def failure(self, now: float, reason: str = "call failed") -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.config.failure_threshold:
            self._open(now, reason)

    def trip(self, now: float, reason: str) -> None:
        """Open at once: the failure is certain (e.g. the backend saw the process exit)."""
        self._open(now, reason)

    def _open(self, now: float, reason: str) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.reason = reason

    def tick(self, now: float) -> BreakerState:
        """Advance time: silence opens the breaker; an open breaker becomes half-open after ``open_for_s``."""
        if self.state is not BreakerState.OPEN and now - self.last_heartbeat > self.config.heartbeat_timeout_s:
            self._open(now, "heartbeat silence")
        elif self.state is BreakerState.OPEN and self.reason != "heartbeat silence":
            if now - self.opened_at >= self.config.open_for_s:
                self.state = BreakerState.HALF_OPEN
        return self.state

    def allows(self, now: float) -> bool:
        """Closed: yes. Half-open: yes (the probe). Open: no."""
        return self.tick(now) is not BreakerState.OPEN
