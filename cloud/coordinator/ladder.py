"""A pool's degradation ladder: under overload, give up the least valuable work first.

Levels (each includes the ones before it):

0. normal
1. partial cadence down (``partial_interval_s`` of the ladder)
2. partials off
3. new sessions of the pool's languages go to its ``fallback`` pool (a smaller model)
4. batch-class sessions deferred (route answers: 503, retry after ``defer_s``)
5. batch-class sessions shed (503, no retry)

:func:`step` is pure (explicit times): the pool steps down one level when its pressure has been
high for ``down_after_s``, and up one level when it has been low for ``up_after_s``; never more
than one step per ``min_step_s``. Between the high and the low mark nothing changes (hysteresis),
so a pool at the edge does not flap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from splitasr.shared.errors import ConfigError

LEVELS = ("normal", "partials slower", "partials off", "fallback model", "batch deferred", "batch shed")
SLOWER, PARTIALS_OFF, FALLBACK, BATCH_DEFERRED, BATCH_SHED = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class LadderConfig:
    enabled: bool = False
    high_queue_delay_s: float = 0.3  # pressure is high above this stage-0 queue delay ...
    low_queue_delay_s: float = 0.05  # ... and low below this one
    slo_p99_ms: float = 0.0  # also high when the pool's p99 end of utterance -> FINAL is above this (0: off)
    down_after_s: float = 2.0
    up_after_s: float = 20.0
    min_step_s: float = 2.0
    max_level: int = BATCH_SHED
    partial_interval_s: float = 1.2  # level 1's cadence
    defer_s: float = 30.0  # level 4: batch sessions are told to come back after this

    def __post_init__(self) -> None:
        if not 0 <= self.low_queue_delay_s < self.high_queue_delay_s:
            raise ConfigError("ladder: low_queue_delay_s must be >= 0 and below high_queue_delay_s")
        if min(self.down_after_s, self.up_after_s, self.min_step_s) < 0 or self.slo_p99_ms < 0:
            raise ConfigError("ladder: times must be >= 0")
        if not 0 <= self.max_level <= BATCH_SHED:
            raise ConfigError(f"ladder: max_level must be in [0, {BATCH_SHED}]")
        if not 0.1 <= self.partial_interval_s <= 10 or not 1 <= self.defer_s <= 3600:
            raise ConfigError("ladder: partial_interval_s in [0.1, 10], defer_s in [1, 3600]")


@dataclass(frozen=True)
class LadderState:
    level: int = 0
    changed: float = float("-inf")  # when the level last changed
    high_since: float | None = None
    low_since: float | None = None
    reason: str = ""


def pressure(config: LadderConfig, queue_delay_s: float, p99_ms: float) -> str | None:
    """``"high"``, ``"low"`` or None (in between) for the pool's current signals."""
    if queue_delay_s > config.high_queue_delay_s or (config.slo_p99_ms and p99_ms > config.slo_p99_ms):
        return "high"
    if queue_delay_s < config.low_queue_delay_s and not (config.slo_p99_ms and p99_ms > 0.8 * config.slo_p99_ms):
        return "low"
    return None


def step(config: LadderConfig, state: LadderState, now: float, queue_delay_s: float, p99_ms: float) -> LadderState:
    """One decision period of the ladder (see the module docstring)."""
    if not config.enabled:
        return state if state.level == 0 else LadderState(reason="ladder off")
    level = pressure(config, queue_delay_s, p99_ms)
    high_since = (state.high_since if state.high_since is not None else now) if level == "high" else None
    low_since = (state.low_since if state.low_since is not None else now) if level == "low" else None
    state = replace(state, high_since=high_since, low_since=low_since)
    if now - state.changed < config.min_step_s:
        return state
    signals = f"queue delay {queue_delay_s * 1000:.0f} ms, p99 {p99_ms:.0f} ms"
    if high_since is not None and now - high_since >= config.down_after_s and state.level < config.max_level:
        new = state.level + 1
        return LadderState(new, now, now, None, f"down to {LEVELS[new]}: {signals}")
    if low_since is not None and now - low_since >= config.up_after_s and state.level > 0:
        new = state.level - 1
        return LadderState(new, now, None, now, f"up to {LEVELS[new]}: {signals}")
    return state
