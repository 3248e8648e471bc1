"""Reconnect schedule: exponential backoff with full jitter. Pure (the RNG is injected)."""

from __future__ import annotations

import random


def backoff_delay_s(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before reconnect attempt ``attempt`` (0-based): uniform in [0, min(max_s, initial_s·2^attempt)],
    never below ``initial_s / 2`` so a flapping peer is not hammered."""
    if attempt < 0 or initial_s <= 0 or max_s < initial_s:
        raise ValueError("attempt >= 0 and 0 < initial_s <= max_s required")
    cap = min(max_s, initial_s * (2 ** min(attempt, 30)))
    return max(initial_s / 2, rng.uniform(0.0, cap))
