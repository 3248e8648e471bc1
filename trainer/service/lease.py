"""The trainer's leadership lease: one key in a JetStream KV bucket whose max age is the lease TTL.

Owns the lease rules and nothing else (no connection, no training): ``try_acquire`` creates the key
(succeeds only when it does not exist, i.e. nobody holds it, the holder's entry expired or was released),
``renew`` updates it at the revision this holder last wrote (fails when anyone else wrote it since),
``release`` deletes it at that revision (a graceful stop: a standby acquires at its next poll instead of
after the TTL; a no-op when the lease is no longer held), and ``held`` is the *local* view: the lease
counts as held until ``validity_fraction`` × TTL after the start of the last successful write, measured
on this process's monotonic clock. The server expires the entry no sooner than TTL after that write
reached it, so a holder stops acting on the lease before any standby can create the key again (clock
rates assumed to agree within 1 − validity_fraction).

A renewal whose answer was lost (the request timed out, but the write reached the server) makes the next
renewal fail on the revision; the key then still holds this replica's name at a newer revision, which
``renew`` adopts (validity counted from the start of the first unanswered attempt, the earliest the lost
write can have happened) instead of giving the lease up.

The KV is duck-typed (``create(key, value) -> revision``, ``update(key, value, last=revision) ->
revision``, ``delete(key, last=revision)``, ``get(key) -> (value, revision) | None``) so the rules are
unit-tested with a fake KV and a fake clock; nats-py's ``KeyValue`` fits through
``failover.NatsLeaseKV``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("trainer.service.lease")

LEASE_KEY = "active"
LEASE_STATES = ("standby", "active", "lost", "released")


class LeaseRejected(Exception):
    """The KV refused the write because the key's revision is not the expected one (someone else holds
    or took the lease). Adapters raise it for nats-py's ``KeyWrongLastSequenceError``."""


class TrainerLease:
    """One replica's lease. ``revision`` is the KV revision of its last successful write (None while a
    standby); publishing code fences on ``held()`` and on the policy pointer's own revision."""

    def __init__(
        self,
        kv: Any,
        holder: str,
        ttl_s: float,
        validity_fraction: float = 0.75,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < validity_fraction < 1:
            raise ValueError("validity_fraction must be in (0, 1)")
        self.kv = kv
        self.holder = holder
        self.ttl_s = ttl_s
        self.validity_fraction = validity_fraction
        self.clock = clock
        self.revision: int | None = None
        self.state = "standby"
        self.valid_until_s = 0.0
        self.acquisitions = 0
        self.renewals = 0
        self.losses = 0
        self.adopted_renewals = 0
        # Start of the first renewal attempt that raised before an answer (its write may have gone through).
        self._unanswered_since: float | None = None

    @property
    def renew_every_s(self) -> float:
        """Renew four times per TTL: two missed renewals still leave the lease valid."""
        return self.ttl_s / 4

    def held(self) -> bool:
        return self.revision is not None and self.clock() < self.valid_until_s

    async def try_acquire(self) -> bool:
        """Create the key; True when this replica now holds the lease."""
        if self.state in ("lost", "released"):
            return False  # a replica that lost its lease never acts as active again (it restarts)
        started = self.clock()
        try:
            revision = await self.kv.create(LEASE_KEY, self.holder.encode())
        except LeaseRejected:
            return False
        self.revision = int(revision)
        self.valid_until_s = started + self.validity_fraction * self.ttl_s
        self.state = "active"
        self.acquisitions += 1
        log.info("trainer_lease_acquired", holder=self.holder, revision=self.revision, ttl_s=self.ttl_s)
        return True

    async def renew(self) -> bool:
        """Rewrite the key at our revision; False (and the lease is lost for good) when it was taken, or
        when the local validity ran out before the write went through."""
        if self.revision is None or self.state != "active":
            return False
        if not self.held():
            self.lose("expired before renewal")
            return False
        started = self.clock()
        earliest = started if self._unanswered_since is None else self._unanswered_since
        self._unanswered_since = earliest  # cleared below once this attempt is answered
        try:
            revision = await self.kv.update(LEASE_KEY, self.holder.encode(), last=self.revision)
        except LeaseRejected:
            revision = await self._own_newer_revision() if earliest < started else None
            if revision is None:
                self._unanswered_since = None
                self.lose("the lease key was written by another replica")
                return False
            started = earliest  # an unanswered attempt's write went through: count from its start
            self.adopted_renewals += 1
            log.info("trainer_lease_unanswered_renewal_adopted", holder=self.holder, revision=revision)
        self._unanswered_since = None
        if not self.held():
            # The write succeeded after the local validity ran out: a standby may already act; stay lost.
            self.lose("renewal came back after the lease's local validity")
            return False
        self.revision = int(revision)
        self.valid_until_s = started + self.validity_fraction * self.ttl_s
        self.renewals += 1
        return True

    async def _own_newer_revision(self) -> int | None:
        """The key's revision when it holds this replica's name at a revision newer than ours (a renewal
        whose answer was lost); None when someone else wrote it or it is gone."""
        current = await self.kv.get(LEASE_KEY)
        if current is None:
            return None
        value, revision = current
        if value != self.holder.encode() or self.revision is None or int(revision) <= self.revision:
            return None
        return int(revision)

    async def release(self) -> bool:
        """Give the lease up (graceful stop): stop acting on it, then delete the key at our revision, so a
        standby acquires at its next poll. False when it was not held (nothing written) or the key was
        written by someone else meanwhile (left alone). Call it after training and publishing stopped."""
        if self.state != "active" or not self.held():
            return False
        revision = self.revision
        self.state, self.revision = "released", None  # never act on it again, whatever the delete does
        try:
            await self.kv.delete(LEASE_KEY, last=revision)
        except LeaseRejected as exc:
            log.warning("trainer_lease_not_released", holder=self.holder, reason=str(exc))
            return False
        log.info("trainer_lease_released", holder=self.holder, revision=revision)
        return True

    def lose(self, reason: str) -> None:
        if self.state in ("lost", "released"):
            return
        self.state = "lost"
        self.revision = None
        self.losses += 1
        log.error("trainer_lease_lost", holder=self.holder, reason=reason)
