"""A per-provider circuit breaker: a pure state machine over an injected monotonic clock.

closed    -> calls pass; ``failure_threshold`` consecutive failures open it.
open      -> calls are refused until ``open_s`` has passed, then it turns half-open.
half_open -> exactly one probe call passes; its success closes the breaker, its failure re-opens it.

Owns only the state; the pool asks ``allow()`` before an attempt and reports the outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """Not thread-safe: used from one event loop. ``failure_threshold == 0`` disables it (always closed)."""

    def __init__(
        self, failure_threshold: int, open_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failure_threshold < 0:
            raise ValueError("failure_threshold must be >= 0")
        if open_s <= 0:
            raise ValueError("open_s must be > 0")
        self._threshold = failure_threshold
        self._open_s = open_s
        self._clock = clock
        self._state = CLOSED
        self._consecutive_failures = 0
        self._opened_at_s = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at_s >= self._open_s:
            return HALF_OPEN
        return self._state

    @property
    def retry_in_s(self) -> float:
        """Seconds until an open breaker lets a probe through (0 unless open)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self._open_s - (self._clock() - self._opened_at_s))

    def allow(self) -> bool:
        """True when a call may go out now. In half-open, only the first caller gets True (the probe)."""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN:
            return False
        if self._state == OPEN:  # the open period just ended: move to half-open for real
            self._state = HALF_OPEN
            self._probe_in_flight = False
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def record_success(self) -> None:
        self._state = CLOSED
        self._consecutive_failures = 0
        self._probe_in_flight = False

    def record_failure(self) -> None:
        if self._threshold == 0:
            return
        self._consecutive_failures += 1
        if self._state == HALF_OPEN or self._consecutive_failures >= self._threshold:
            self._state = OPEN
            self._opened_at_s = self._clock()
            self._probe_in_flight = False

    def release_probe(self) -> None:
        """The probe ended without a verdict (caller cancelled): let another probe through."""
        self._probe_in_flight = False
