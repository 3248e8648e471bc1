"""The bounded pending-decision store: what the trainer needs about a decision until its outcome arrives.

Owns TTL and size bounds and idempotency bookkeeping; knows nothing about the spool or gRPC. Pure
in-memory, single-threaded (used from the event loop), clock injected for tests.

- ``add`` stores a ``PendingDecision``; beyond ``max_entries`` the oldest is evicted as expired.
- ``take`` removes and returns a decision for recording, and remembers its id as *recorded* for the
  TTL so a repeated ReportOutcome is acknowledged as a no-op instead of NOT_FOUND.
- ``expire`` returns decisions older than the TTL; the caller applies the configured expiry action.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class PendingDecision:
    """One routing decision waiting for its outcome. ``allowed`` follows ``models``; empty = all allowed."""

    decision_id: str
    embedding: np.ndarray = field(repr=False)
    quality_weight: float
    models: tuple[str, ...]
    allowed: tuple[bool, ...]
    model: str
    propensity: float
    policy_version: int
    decided_at_unix_s: float
    # Known when the sidecar forwarded the call itself (Complete); otherwise the caller may report it.
    cost_usd: float | None = None
    # Monotonic time of insertion (TTL clock).
    added_monotonic_s: float = 0.0
    # Set when Complete fell back to another model: the outcome would not describe the logged action.
    answered_by: str | None = None


class LookupResult:
    """Why ``take`` found nothing: never seen / expired, or already recorded."""

    RECORDED = "recorded"
    UNKNOWN = "unknown"


class PendingDecisionStore:
    """Insertion-ordered TTL map of pending decisions plus a TTL set of recorded ids."""

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s <= 0 or max_entries < 1:
            raise ValueError("ttl_s must be > 0 and max_entries >= 1")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._pending: OrderedDict[str, PendingDecision] = OrderedDict()
        self._recorded: OrderedDict[str, float] = OrderedDict()
        # Decisions evicted because the store was full; the caller drains them like expired ones.
        self._evicted: list[PendingDecision] = []
        self.evicted_total = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, decision: PendingDecision) -> None:
        decision.added_monotonic_s = self._clock()
        self._pending[decision.decision_id] = decision
        while len(self._pending) > self.max_entries:
            _, oldest = self._pending.popitem(last=False)
            self._evicted.append(oldest)
            self.evicted_total += 1

    def restore_pending(self, decision: PendingDecision, age_s: float) -> None:
        """Put back a decision replayed after a restart, ``age_s`` seconds old (its TTL keeps running)."""
        self.add(decision)
        decision.added_monotonic_s = self._clock() - age_s

    def restore_recorded(self, decision_id: str, age_s: float) -> None:
        """Remember an id recorded ``age_s`` seconds before (replayed after a restart)."""
        self._recorded[decision_id] = self._clock() - age_s

    def get(self, decision_id: str) -> PendingDecision | None:
        return self._pending.get(decision_id)

    def take(self, decision_id: str) -> PendingDecision | str:
        """Remove and return the decision, or ``LookupResult.RECORDED`` / ``LookupResult.UNKNOWN``."""
        self._forget_old_recorded()
        decision = self._pending.get(decision_id)
        if decision is not None and self._clock() - decision.added_monotonic_s <= self.ttl_s:
            del self._pending[decision_id]
            return decision
        if decision_id in self._recorded:
            return LookupResult.RECORDED
        return LookupResult.UNKNOWN

    def restore(self, decision: PendingDecision) -> None:
        """Put back a decision whose recording failed (e.g. spool full) so a retry can succeed."""
        self._pending[decision.decision_id] = decision

    def mark_recorded(self, decision_id: str) -> None:
        self._recorded[decision_id] = self._clock()
        self._recorded.move_to_end(decision_id)
        while len(self._recorded) > self.max_entries:
            self._recorded.popitem(last=False)

    def expire(self) -> list[PendingDecision]:
        """Remove and return every decision past its TTL (plus any evicted for space), oldest first."""
        now = self._clock()
        expired, self._evicted = self._evicted, []
        while self._pending:
            decision_id, decision = next(iter(self._pending.items()))
            if now - decision.added_monotonic_s <= self.ttl_s:
                break
            del self._pending[decision_id]
            expired.append(decision)
        self._forget_old_recorded()
        return expired

    def _forget_old_recorded(self) -> None:
        now = self._clock()
        while self._recorded:
            decision_id, at = next(iter(self._recorded.items()))
            if now - at <= self.ttl_s:
                break
            del self._recorded[decision_id]
