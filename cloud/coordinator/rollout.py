"""Canary rollouts of a pool version: the policy, pure and driven by explicit times (a fake clock in tests).

``splitasr rollout start POOL --to VERSION --steps 5,25,50,100 --interval 60s`` sends that share
of *new* sessions to the canary version (by a hash of the session id, so a session that reconnects
stays on its version). Every decision period the coordinator compares what canary and stable
answered since the current step began (:class:`VersionStats`); :func:`evaluate` says what to do:

- a guard is breached (error rate, empty-FINAL rate, p99 end-of-utterance → FINAL latency and,
  when the pool has a probe set, WER on its clips (probe.py), each against the stable version's)
  → roll back at once, with the reason;
- the step's interval has passed, the canary answered at least ``min_finals`` utterances and the
  step's probe (if the pool has one) has scored both versions → the next step, or, after the
  last (100 %), promotion: the canary becomes the stable version;
- otherwise wait (a step is extended while the canary has too little traffic to judge).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from splitasr.shared.errors import ConfigError
from splitasr.shared.flags import in_share

RUNNING, PROMOTED, ROLLED_BACK, ABORTED = "running", "promoted", "rolled_back", "aborted"
DEFAULT_STEPS = (5, 25, 50, 100)


@dataclass(frozen=True)
class Guards:
    """When a canary is rolled back: its rates or latency worse than the stable version's by more than this."""

    min_finals: int = 3  # canary utterances answered in a step before it may advance
    min_judged: int = 2  # ... and before its rates are judged at all
    max_error_rate_increase: float = 0.05  # errors / answered utterances, canary minus stable
    max_empty_rate_increase: float = 0.25  # empty FINALs / FINALs, canary minus stable
    p99_ratio: float = 1.5  # canary p99 above max(stable p99 x ratio, stable p99 + slack) ...
    p99_slack_ms: float = 1000.0
    p99_max_ms: float = 0.0  # ... or above this (0: off), also when stable has no latency yet
    max_wer_increase: float = 0.05  # probe WER, canary minus stable (pools with a probe set only)

    def __post_init__(self) -> None:
        if self.min_finals < 1 or self.min_judged < 1:
            raise ConfigError("rollout guards: min_finals and min_judged must be at least 1")
        rates = (self.max_error_rate_increase, self.max_empty_rate_increase, self.max_wer_increase)
        if not all(0 <= r <= 1 for r in rates):
            raise ConfigError("rollout guards: rate and WER increases must be in [0, 1]")
        if self.p99_ratio < 1 or self.p99_slack_ms < 0 or self.p99_max_ms < 0:
            raise ConfigError("rollout guards: p99_ratio >= 1, p99_slack_ms and p99_max_ms >= 0")


@dataclass(frozen=True)
class VersionStats:
    """What one version answered since the step began (cumulative counters' differences)."""

    finals: int = 0
    empty_finals: int = 0
    errors: int = 0
    p99_ms: float = 0.0  # worst stage-0 shard's recent p99 (0: no FINAL yet)
    probe_wer: float | None = None  # WER on the pool's probe clips in this step (None: not scored yet)

    @property
    def answered(self) -> int:
        return self.finals + self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.answered if self.answered else 0.0

    @property
    def empty_rate(self) -> float:
        return self.empty_finals / self.finals if self.finals else 0.0


def breach(canary: VersionStats, stable: VersionStats, guards: Guards) -> str | None:
    """The first guard the canary breaches, as a sentence; None when it is within all of them."""
    if canary.answered < guards.min_judged:
        return None
    if canary.error_rate - stable.error_rate > guards.max_error_rate_increase:
        return (
            f"error rate {canary.error_rate:.0%} ({canary.errors}/{canary.answered}) vs stable "
            f"{stable.error_rate:.0%}: more than {guards.max_error_rate_increase:.0%} above"
        )
    if canary.empty_rate - stable.empty_rate > guards.max_empty_rate_increase:
        return (
            f"empty-FINAL rate {canary.empty_rate:.0%} ({canary.empty_finals}/{canary.finals}) vs stable "
            f"{stable.empty_rate:.0%}: more than {guards.max_empty_rate_increase:.0%} above"
        )
    if canary.probe_wer is not None and stable.probe_wer is not None:
        if canary.probe_wer - stable.probe_wer > guards.max_wer_increase:
            return (
                f"probe WER {canary.probe_wer:.1%} vs stable {stable.probe_wer:.1%}: more than "
                f"{guards.max_wer_increase:.1%} above"
            )
    if canary.finals and guards.p99_max_ms and canary.p99_ms > guards.p99_max_ms:
        return f"p99 FINAL latency {canary.p99_ms:.0f} ms above the limit {guards.p99_max_ms:.0f} ms"
    if canary.finals and stable.p99_ms:
        limit = max(stable.p99_ms * guards.p99_ratio, stable.p99_ms + guards.p99_slack_ms)
        if canary.p99_ms > limit:
            return f"p99 FINAL latency {canary.p99_ms:.0f} ms vs stable {stable.p99_ms:.0f} ms (limit {limit:.0f} ms)"
    return None


def parse_steps(steps: str | list | tuple) -> tuple[int, ...]:
    """``"5,25,50,100"`` (or a list): increasing shares in percent, ending at 100."""
    items = steps.split(",") if isinstance(steps, str) else list(steps)
    try:
        out = tuple(int(str(s).strip()) for s in items)
    except ValueError:
        raise ConfigError(f"rollout steps must be integers (percent), got {steps!r}") from None
    if not out or out[-1] != 100 or any(not 0 < s <= 100 for s in out) or list(out) != sorted(set(out)):
        raise ConfigError(f"rollout steps must increase within (0, 100] and end at 100, got {steps!r}")
    return out


def parse_interval(text: str | float | int) -> float:
    """``60``, ``"60s"``, ``"2m"``: a step's interval in seconds, in [1, 86400]."""
    value = str(text).strip()
    scale = {"s": 1, "m": 60, "h": 3600}.get(value[-1:], None)
    try:
        seconds = float(value[:-1] if scale else value) * (scale or 1)
    except ValueError:
        raise ConfigError(f"rollout interval must be seconds (60, 60s, 2m), got {text!r}") from None
    if not 1 <= seconds <= 86_400:
        raise ConfigError(f"rollout interval must be in [1 s, 24 h], got {text!r}")
    return seconds


@dataclass(frozen=True)
class Rollout:
    """One pool's rollout: where it is and how it got there (kept in the coordinator's state store)."""

    pool: str
    stable: str  # the version it started from
    canary: str
    steps: tuple[int, ...] = DEFAULT_STEPS
    interval_s: float = 60.0
    guards: Guards = field(default_factory=Guards)
    status: str = RUNNING
    step: int = 0  # index into steps
    step_started: float | None = None  # None: the canary is not serving yet (the clock waits)
    started: float = 0.0
    reason: str = ""
    probe: bool = False  # the pool has a probe set: each step waits for both versions' probe WER

    @property
    def share(self) -> float:
        """The share of new sessions for the canary now (0 before it serves and after a rollback)."""
        if self.status == PROMOTED:
            return 1.0
        if self.status != RUNNING or self.step_started is None:
            return 0.0
        return self.steps[self.step] / 100

    def to_dict(self) -> dict:
        return {**asdict(self), "steps": list(self.steps), "share": self.share}

    @classmethod
    def from_dict(cls, d: dict) -> Rollout:
        d = {k: v for k, v in d.items() if k != "share"}
        return cls(**{**d, "steps": tuple(d["steps"]), "guards": Guards(**d["guards"])})


def to_canary(session: str, share: float) -> bool:
    """Whether a new session goes to the canary: a stable hash of its id against the share."""
    return in_share(session, share)


@dataclass(frozen=True)
class Step:
    """What :func:`evaluate` decided: the new state and, when it changed, what to log."""

    rollout: Rollout
    event: str | None = None  # started-step | advanced | promoted | rolled_back
    detail: str = ""


def evaluate(r: Rollout, canary: VersionStats, stable: VersionStats, now: float, canary_serving: bool) -> Step:
    """One decision period of a running rollout (see the module docstring)."""
    if r.status != RUNNING:
        return Step(r)
    if r.step_started is None:
        if not canary_serving:
            return Step(r)
        r = replace(r, step_started=now)
        return Step(r, "started-step", f"canary {r.canary} serving; {r.steps[0]}% of new sessions")
    reason = breach(canary, stable, r.guards)
    if reason is not None:
        return Step(replace(r, status=ROLLED_BACK, reason=reason), ROLLED_BACK, reason)
    if now - r.step_started < r.interval_s:
        return Step(r)
    if canary.answered < r.guards.min_finals:
        return Step(r)  # too little canary traffic to judge: the step goes on
    if r.probe and (canary.probe_wer is None or stable.probe_wer is None):
        return Step(r)  # the step's probe has not scored both versions yet
    summary = (
        f"{r.steps[r.step]}% step passed: canary {canary.answered} answered, {canary.error_rate:.0%} errors, "
        f"{canary.empty_rate:.0%} empty, p99 {canary.p99_ms:.0f} ms; stable p99 {stable.p99_ms:.0f} ms"
    )
    if canary.probe_wer is not None and stable.probe_wer is not None:
        summary += f"; probe WER {canary.probe_wer:.1%} vs stable {stable.probe_wer:.1%}"
    if r.step + 1 == len(r.steps):
        return Step(replace(r, status=PROMOTED, reason=summary), PROMOTED, summary)
    r = replace(r, step=r.step + 1, step_started=now)
    return Step(r, "advanced", f"{summary}; now {r.steps[r.step]}%")
