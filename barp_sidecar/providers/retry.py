"""The retry schedule: which failures are retried, how long to wait, and Retry-After parsing.

Pure: randomness comes from an injected ``random.Random`` and "now" is an argument, so every schedule is
reproducible in tests. Knows nothing about HTTP clients or about when the first token was streamed
(the pool never retries after that).
"""

from __future__ import annotations

import email.utils
import math
import random
from dataclasses import dataclass

from barp_sidecar.backoff import backoff_delay_s

# 408 Request Timeout, 429 Too Many Requests and every 5xx may succeed when asked again; other 4xx will not.
RETRYABLE_STATUS = frozenset({408, 429})


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or 500 <= status <= 599


def parse_retry_after(value: str | None, now_unix_s: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP-date); None if absent/invalid.

    Negative or past values give 0. Fractional seconds (sent by some providers) are accepted.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        return max(0.0, when.timestamp() - now_unix_s)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped; ``max_attempts`` counts the first attempt."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    # A Retry-After beyond this is not honoured by waiting: the attempt chain gives up (fallback instead).
    retry_after_max_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("need 0 <= initial_backoff_s <= max_backoff_s")

    def backoff_s(self, failed_attempts: int, rng: random.Random) -> float:
        """Delay after failure number ``failed_attempts`` (1-based): U[0, min(cap, base·2^(n-1))]."""
        if failed_attempts < 1:
            raise ValueError("failed_attempts is 1-based")
        return backoff_delay_s(failed_attempts - 1, self.initial_backoff_s, self.max_backoff_s, rng)

    def next_delay_s(
        self, failed_attempts: int, retry_after_s: float | None, rng: random.Random
    ) -> float | None:
        """How long to wait before the next attempt, or None when no further attempt should be made.

        None when the attempts are used up or the provider asked for a longer pause than
        ``retry_after_max_s``. A Retry-After replaces the jittered backoff when it is longer.
        """
        if failed_attempts >= self.max_attempts:
            return None
        delay = self.backoff_s(failed_attempts, rng)
        if retry_after_s is not None:
            if retry_after_s > self.retry_after_max_s:
                return None
            delay = max(delay, retry_after_s)
        return delay
