"""Outcome recording: turns (pending decision, reported outcome) into a durable reward event.

Owns ReportOutcome's semantics (validation, idempotency, NOT_FOUND), the expiry sweep and its configured
default, and building ``barp.v1.RewardEvent``s. Delegates storage to ``PendingDecisionStore`` (kept across
restarts by ``PendingJournal``) and durability to ``RewardSpool``; knows nothing about gRPC (rpc/ maps
the domain errors it raises).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import structlog

from barp_sidecar.bounded_text import bounded_text
from barp_sidecar.domain import Decision
from barp_sidecar.errors import DecisionNotFound, InvalidArgument
from barp_sidecar.gen.barp.v1 import trainer_pb2
from barp_sidecar.rewards.pending import LookupResult, PendingDecision, PendingDecisionStore
from barp_sidecar.rewards.pending_journal import PendingJournal
from barp_sidecar.rewards.spool import RewardSpool, SpoolFull
from barp_sidecar.tasks import cancel_and_wait

log = structlog.get_logger("barp_sidecar.rewards.recorder")


@dataclass
class RecorderCounters:
    """Monotonic counters exported as metrics."""

    recorded: int = 0
    repeated: int = 0
    not_found: int = 0
    expired_dropped: int = 0
    expired_defaulted: int = 0
    refused_spool_full: int = 0
    # Outcomes acknowledged but not turned into events because a fallback model answered (Complete).
    skipped_fallback: int = 0
    # Outcomes recorded while no trainer is configured: spooled for a future trainer, not learned from yet.
    kept_without_trainer: int = 0


def validate_outcome(decision_id: str, quality: float, cost_usd: float | None) -> None:
    """Raise ``InvalidArgument`` naming the field for a malformed ReportOutcome."""
    if not decision_id:
        raise InvalidArgument("decision_id", "is required")
    if not isinstance(quality, int | float) or math.isnan(quality) or not 0.0 <= quality <= 1.0:
        raise InvalidArgument("quality", f"must be in [0, 1], not {quality!r}")
    if cost_usd is not None and (not math.isfinite(cost_usd) or cost_usd < 0):
        raise InvalidArgument("cost_usd", f"must be a finite number >= 0, not {cost_usd!r}")


def build_event(
    decision: PendingDecision, quality: float, cost_usd: float | None, sidecar_id: str, defaulted: bool
) -> trainer_pb2.RewardEvent:
    event = trainer_pb2.RewardEvent(
        event_id=decision.decision_id,
        sidecar_id=sidecar_id,
        embedding=decision.embedding.astype("float32").tolist(),
        quality_weight=decision.quality_weight,
        allowed=list(decision.allowed),
        model=decision.model,
        propensity=decision.propensity,
        policy_version=decision.policy_version,
        quality=quality,
        decided_at_unix_s=decision.decided_at_unix_s,
        quality_defaulted=defaulted,
    )
    cost = cost_usd if cost_usd is not None else decision.cost_usd
    if cost is not None:
        event.cost_usd = cost
    return event


class OutcomeRecorder:
    """Pending decisions in, durable reward events out. ``start()`` runs the expiry sweep; ``close()``."""

    def __init__(
        self,
        store: PendingDecisionStore,
        spool: RewardSpool,
        sidecar_id: str,
        expiry_action: str,
        default_quality: float,
        sweep_interval_s: float = 1.0,
        journal: PendingJournal | None = None,
        trainer_attached: bool = True,
    ) -> None:
        if expiry_action not in ("drop", "default_quality"):
            raise ValueError(f"expiry_action must be 'drop' or 'default_quality', not {expiry_action!r}")
        self.store = store
        self.spool = spool
        self.sidecar_id = sidecar_id
        self.expiry_action = expiry_action
        self.default_quality = default_quality
        self.sweep_interval_s = sweep_interval_s
        # False when no trainer is configured: events are kept in the spool (under its quota) for one.
        self.trainer_attached = trainer_attached
        self.counters = RecorderCounters()
        self._sweeper: asyncio.Task[None] | None = None
        # Decisions whose outcome is being made durable now -> resolves True once recorded, False if not.
        self._in_flight: dict[str, asyncio.Future[bool]] = {}
        # Durable copy of the store (pending decisions and recorded ids) for restarts; None = memory only.
        self.journal = journal

    async def start(self) -> None:
        """Replay the journal (decisions pending and ids recorded before a restart), then sweep."""
        if self.journal is not None:
            state = await asyncio.to_thread(self.journal.open)
            for decision, age_s in state.pending:
                self.store.restore_pending(decision, age_s)
            for decision_id, age_s in state.recorded.items():
                self.store.restore_recorded(decision_id, age_s)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop(), name="outcome-expiry")

    async def close(self) -> None:
        await cancel_and_wait(self._sweeper)
        self._sweeper = None
        if self.journal is not None:
            self.journal.close()

    def _add(self, decision: PendingDecision) -> None:
        self.store.add(decision)
        if self.journal is not None:
            self.journal.added(decision)

    def _mark_recorded(self, decision_id: str) -> None:
        self.store.mark_recorded(decision_id)
        if self.journal is not None:
            self.journal.recorded(decision_id)

    def remember(self, decision: PendingDecision) -> None:
        """A decision now waits for ReportOutcome (or expiry)."""
        self._add(decision)

    def remember_decision(self, decision: Decision) -> None:
        """``RoutingService``'s ``on_decision`` hook: keep what the trainer needs, never the prompt."""
        self._add(
            PendingDecision(
                decision_id=decision.decision_id,
                embedding=decision.embedding,
                quality_weight=decision.quality_weight,
                models=decision.models,
                allowed=() if all(decision.allowed) else decision.allowed,
                model=decision.model,
                propensity=decision.propensity,
                policy_version=decision.policy_version,
                decided_at_unix_s=time.time(),
            )
        )

    def record_completion(
        self, decision_id: str, model: str, cost_usd: float, latency_ms: float, usage: object = None
    ) -> None:
        """The providers' ``CompletionRecorder`` protocol: cost of the model that answered a Complete.

        When the chosen model answered, its cost goes into the pending decision. When a fallback answered,
        the later outcome describes a model the policy did not choose (with no propensity for it): the
        decision is marked and ReportOutcome will acknowledge it without emitting a reward event.
        """
        decision = self.store.get(decision_id)
        if decision is None:
            return
        if model == decision.model:
            decision.cost_usd = cost_usd
        else:
            decision.answered_by = model
        if self.journal is not None:
            self.journal.added(decision)

    async def report(self, decision_id: str, quality: float, cost_usd: float | None = None) -> bool:
        """Record an outcome. True = recorded now; False = already recorded (idempotent repeat).

        Exactly one of any number of concurrent calls for one decision records it (True); the others wait
        for that recording to be durable and answer False. If it fails (spool full), the decision is
        pending again and the next waiter tries itself. The first call's quality is the one recorded.

        Raises ``InvalidArgument`` (field named), ``DecisionNotFound`` (unknown or expired decision), or
        ``SpoolFull`` (not recorded; the decision stays pending so a retry can succeed).
        """
        validate_outcome(decision_id, quality, cost_usd)
        while (in_flight := self._in_flight.get(decision_id)) is not None:
            if await asyncio.shield(in_flight):
                self.counters.repeated += 1
                return False
        found = self.store.take(decision_id)
        if found == LookupResult.RECORDED:
            self.counters.repeated += 1
            return False
        if not isinstance(found, PendingDecision):
            self.counters.not_found += 1
            raise DecisionNotFound(f"decision_id {bounded_text(decision_id, 80)!r} is unknown or expired")
        if found.answered_by is not None:
            self._mark_recorded(decision_id)
            self.counters.skipped_fallback += 1
            log.info(
                "outcome_not_learned_fallback",
                decision_id=decision_id,
                chosen=found.model,
                answered_by=found.answered_by,
            )
            return True
        event = build_event(found, float(quality), cost_usd, self.sidecar_id, defaulted=False)
        # Concurrent repeats wait on this instead of finding the decision neither pending nor recorded.
        recorded: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._in_flight[decision_id] = recorded
        durable = False
        try:
            await self.spool.append(event)
            durable = True
        except SpoolFull as full:
            self.counters.refused_spool_full += 1
            if not self.trainer_attached:
                raise SpoolFull(
                    f"no trainer is configured (trainer.target) and the outcomes kept for one fill the spool "
                    f"({self.spool.size_bytes} bytes, rewards.spool_max_bytes_without_trainer): configure "
                    "a trainer, or set rewards.enabled to false"
                ) from full
            raise
        finally:
            if durable:
                self._mark_recorded(decision_id)
                self.counters.recorded += 1
                if not self.trainer_attached:
                    self.counters.kept_without_trainer += 1
            else:
                self.store.restore(found)
            del self._in_flight[decision_id]
            recorded.set_result(durable)
        return True

    async def sweep(self) -> int:
        """Apply the expiry action to every expired decision; return how many expired."""
        expired = self.store.expire()
        for decision in expired:
            if self.expiry_action == "drop" or decision.answered_by is not None:
                self.counters.expired_dropped += 1
                self._forget(decision.decision_id)
                continue
            event = build_event(decision, self.default_quality, None, self.sidecar_id, defaulted=True)
            try:
                await self.spool.append(event)
            except SpoolFull:
                self.counters.refused_spool_full += 1
                self._forget(decision.decision_id)
                continue
            self._mark_recorded(decision.decision_id)
            self.counters.expired_defaulted += 1
        if expired:
            log.info("pending_decisions_expired", count=len(expired), action=self.expiry_action)
        return len(expired)

    def _forget(self, decision_id: str) -> None:
        if self.journal is not None:
            self.journal.forgotten(decision_id)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            try:
                await self.sweep()
                if self.journal is not None:
                    self.journal.maintain(self.store.get)
            except Exception:  # keep sweeping: one failure must not stop expiry forever
                log.exception("pending_expiry_sweep_failed")
