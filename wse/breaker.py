"""Circuit breakers around message handlers, one per message type.

A handler that keeps failing (raising, or running past ``handler_timeout_ms``) opens its
breaker: for ``breaker_reset_ms`` its messages are answered at once with a
``HANDLER_UNAVAILABLE`` error instead of reaching it. Then the breaker is half-open: up to
``breaker_probes`` messages go through as probes; if they succeed it closes, if one fails it
opens again.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

State = Literal["closed", "open", "half_open"]

REJECT = 0
"""``Breaker.allow``: refuse the message."""
PASS = 1
"""``Breaker.allow``: run the handler."""
PROBE = 2
"""``Breaker.allow``: run the handler as a half-open probe."""


class BreakerStatus(NamedTuple):
    """A breaker as ``WSEApp.breakers()`` reports it."""

    state: State
    failures: int
    """Failures since the application started."""
    consecutive_failures: int
    successes: int
    rejected: int
    """Messages answered with ``HANDLER_UNAVAILABLE``."""
    times_opened: int
    retry_after: float
    """Seconds until an open breaker lets a probe through (0 unless open)."""


class Breaker:
    """The breaker of one message type. Times are ``time.monotonic()`` seconds."""

    __slots__ = (
        "threshold", "reset_s", "probes", "state", "consecutive", "failures", "successes",
        "rejected", "times_opened", "opened_at", "probes_out", "probes_ok",
    )

    def __init__(self, threshold: int, reset_s: float, probes: int) -> None:
        self.threshold = threshold
        self.reset_s = reset_s
        self.probes = max(1, probes)
        self.state: State = "closed"
        self.consecutive = 0
        self.failures = 0
        self.successes = 0
        self.rejected = 0
        self.times_opened = 0
        self.opened_at = 0.0
        self.probes_out = 0
        self.probes_ok = 0

    def allow(self, now: float) -> int:
        """``PASS``, ``PROBE`` or ``REJECT`` for the next message."""
        if self.state == "closed":
            return PASS
        if self.state == "open":
            if now - self.opened_at < self.reset_s:
                self.rejected += 1
                return REJECT
            self.state = "half_open"
            self.probes_out = 0
            self.probes_ok = 0
        if self.probes_out < self.probes - self.probes_ok:
            self.probes_out += 1
            return PROBE
        self.rejected += 1
        return REJECT

    def success(self, probe: bool) -> None:
        self.successes += 1
        self.consecutive = 0
        if probe and self.state == "half_open":
            self.probes_out -= 1
            self.probes_ok += 1
            if self.probes_ok >= self.probes:
                self.state = "closed"

    def failure(self, now: float, probe: bool) -> None:
        self.failures += 1
        self.consecutive += 1
        if (probe and self.state == "half_open") or (self.state == "closed" and self.consecutive >= self.threshold):
            self.state = "open"
            self.opened_at = now
            self.times_opened += 1

    def retry_after(self, now: float) -> float:
        if self.state != "open":
            return 0.0
        return max(0.0, self.opened_at + self.reset_s - now)

    def status(self, now: float) -> BreakerStatus:
        return BreakerStatus(
            self.state, self.failures, self.consecutive, self.successes, self.rejected, self.times_opened,
            round(self.retry_after(now), 3),
        )
