"""The one jittered exponential backoff schedule. Pure (the RNG is injected), no I/O, no sleeping.

Used by the reconnect loops (reward publisher, trainer policy watcher) through ``ReconnectBackoff`` and by
the provider retry policy (``providers.retry``). Owns the delay arithmetic only; each caller owns its loop
and clock.
"""

from __future__ import annotations

import random


def backoff_delay_s(
    attempt: int, initial_s: float, max_s: float, rng: random.Random, *, min_s: float = 0.0
) -> float:
    """Delay before retry ``attempt`` (0-based): uniform in [0, min(max_s, initial_s·2^attempt)] ("full
    jitter"), raised to ``min_s`` (reconnect loops pass ``initial_s / 2`` so a flapping peer is not hammered).

    Draws exactly one ``rng.uniform`` per call, so a seeded RNG gives a reproducible schedule.
    """
    if attempt < 0 or initial_s < 0 or max_s < initial_s or min_s < 0:
        raise ValueError("attempt >= 0, min_s >= 0 and 0 <= initial_s <= max_s required")
    cap = min(max_s, initial_s * (2 ** min(attempt, 30)))
    return max(min_s, rng.uniform(0.0, cap))


class ReconnectBackoff:
    """The schedule of a loop that keeps a stream to a peer open: back off while sessions fail, start over
    after a session that made progress. Delays never fall below ``initial_s / 2`` (no hammering)."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError("0 < initial_s <= max_s required")
        self.initial_s = initial_s
        self.max_s = max_s
        self._rng = rng
        self._attempt = 0

    def next_delay_s(self, made_progress: bool) -> float:
        """Delay before reconnecting after a session ended (``made_progress``: it delivered something)."""
        self._attempt = 0 if made_progress else self._attempt + 1
        return backoff_delay_s(self._attempt, self.initial_s, self.max_s, self._rng, min_s=self.initial_s / 2)
