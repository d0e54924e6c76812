"""Process-level guards for servers: the open-file limit, and accept errors logged at a bounded rate."""

from __future__ import annotations

import asyncio
import logging
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


class AcceptErrorLimiter:
    """An event-loop exception handler that reports accept failures (out of file descriptors) once
    per ``interval_s`` with a count, instead of a traceback per failed accept. asyncio retries the
    accept itself; at the limit it otherwise logs hundreds of tracebacks a second. Everything else
    goes to the loop's default handler."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self.suppressed = 0
        self.reported = 0
        self._last: float | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if context.get("message") != ACCEPT_EXHAUSTED:
            loop.default_exception_handler(context)
            return
        self.suppressed += 1
        now = self.clock()
        if self._last is None or now - self._last >= self.interval_s:
            log.warning(
                "cannot accept connections: %s (%d times since the last report); too many open connections",
                context.get("exception"),
                self.suppressed,
            )
            self._last, self.suppressed = now, 0
            self.reported += 1


def guard_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    raise_open_file_limit()
    loop.set_exception_handler(AcceptErrorLimiter())
