"""Process-level guards for servers (the open-file limit, accept errors and malformed requests
logged at a bounded rate), rate limits, and the clients' jittered back-off."""

from __future__ import annotations

import asyncio
import logging
import random
import resource
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

ACCEPT_EXHAUSTED = "socket.accept() out of system resource"


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one (each connection is a file); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


class Throttle:
    """At most one report per ``interval_s``; counts what it holds back in between."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self.suppressed = 0  # events since the last report
        self.reported = 0
        self._last: float | None = None

    def allow(self) -> int | None:
        """Count one event; the number of events since the last report when this one may be reported."""
        self.suppressed += 1
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            return None
        count, self._last, self.suppressed = self.suppressed, now, 0
        self.reported += 1
        return count


def jittered(seconds: float, spread: float = 0.5, rng: random.Random | None = None) -> float:
    """``seconds`` scaled by a uniform factor in (1 - spread, 1]: clients that failed together (a
    shard died under all of them) do not come back in lockstep, and a wait is never longer than asked."""
    return seconds * (1.0 - spread * (rng or random).random())


class Backoff:
    """Exponential back-off with jitter: ``next()`` waits ``jittered(d)`` where ``d`` doubles from
    ``initial_s`` up to ``max_s``."""

    def __init__(self, initial_s: float = 0.05, max_s: float = 2.0, rng: random.Random | None = None):
        if not 0 < initial_s <= max_s:
            raise ValueError(f"back-off needs 0 < initial_s <= max_s, got {initial_s}, {max_s}")
        self.current_s, self.max_s, self.rng = initial_s, max_s, rng

    def next(self) -> float:
        wait_s = jittered(self.current_s, rng=self.rng)
        self.current_s = min(self.current_s * 2, self.max_s)
        return wait_s


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; :meth:`take` spends them."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self._at = clock()

    def take(self, n: float) -> float:
        """Spend ``n`` tokens and return 0, or spend nothing and return the seconds until there are ``n``."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
        self._at = now
        if n <= self.tokens:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate if n <= self.burst else float("inf")


class AcceptErrorLimiter:
    """An event-loop exception handler that reports accept failures (out of file descriptors) once
    per interval with a count, instead of a traceback per failed accept. asyncio retries the accept
    itself; at the limit it otherwise logs hundreds of tracebacks a second. Everything else goes to
    the loop's default handler."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.throttle = Throttle(interval_s, clock)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if context.get("message") != ACCEPT_EXHAUSTED:
            loop.default_exception_handler(context)
            return
        count = self.throttle.allow()
        if count is not None:
            log.warning(
                "cannot accept connections: %s (%d times since the last report); too many open connections",
                context.get("exception"),
                count,
            )


class BadRequestLogLimiter(logging.Filter):
    """aiohttp logs every request its HTTP parser refuses (over-long lines, bad headers) with a
    traceback at ERROR: a hostile peer could fill the disk. This filter on ``aiohttp.server`` lets one
    such record through per interval, as a one-line WARNING with the count, and drops the rest."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.throttle = Throttle(interval_s, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Error handling request"):
            return True
        count = self.throttle.allow()
        if count is None:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        record.msg = "refused a malformed HTTP request from %s: %s (%d since the last report)"
        record.args = (*(record.args or ("?",))[:1], str(exc).splitlines()[0][:200] if exc else "?", count)
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def guard_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    raise_open_file_limit()
    loop.set_exception_handler(AcceptErrorLimiter())
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestLogLimiter) for f in server_log.filters):
        server_log.addFilter(BadRequestLogLimiter())
