"""Pending-decision store and ReportOutcome semantics: idempotency, NOT_FOUND, validation, expiry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from barp_sidecar.errors import InvalidArgument, NotFound
from barp_sidecar.rewards.pending import LookupResult, PendingDecision, PendingDecisionStore
from barp_sidecar.rewards.recorder import OutcomeRecorder
from barp_sidecar.rewards.spool import RewardSpool, SpoolFull
from tests.learning_helpers import ARMS, DIM


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def decision(decision_id: str, cost_usd: float | None = None) -> PendingDecision:
    return PendingDecision(
        decision_id=decision_id,
        embedding=np.full(DIM, 0.5, dtype=np.float32),
        quality_weight=0.8,
        models=ARMS,
        allowed=(True, False, True),
        model="strong",
        propensity=0.7,
        policy_version=4,
        decided_at_unix_s=1.7e9,
        cost_usd=cost_usd,
    )


@pytest.fixture
async def recorder(tmp_path):
    clock = Clock()
    spool = RewardSpool(tmp_path / "spool", 1 << 20, 0.5)
    await spool.start()
    rec = OutcomeRecorder(PendingDecisionStore(60.0, 3, clock), spool, "sc-1", "drop", 0.0)
    rec.clock = clock  # type: ignore[attr-defined]
    yield rec
    await spool.close()


async def test_report_records_an_event_with_everything_the_trainer_needs(recorder):
    recorder.remember(decision("d1"))
    recorder.record_completion("d1", "strong", 0.003, 120.0)  # Complete forwarded it: the cost is known
    assert await recorder.report("d1", 0.9) is True
    (event,) = recorder.spool.read_after(0, 10)
    assert event.event_id == "d1" and event.sidecar_id == "sc-1" and event.sequence == 1
    assert list(event.allowed) == [True, False, True]
    assert event.model == "strong" and math.isclose(event.propensity, 0.7) and event.policy_version == 4
    assert math.isclose(event.quality, 0.9) and math.isclose(event.cost_usd, 0.003)
    assert len(event.embedding) == DIM and not event.quality_defaulted


async def test_report_is_idempotent_and_the_caller_cost_wins(recorder):
    recorder.remember(decision("d1"))
    assert await recorder.report("d1", 0.5, cost_usd=0.01) is True
    assert await recorder.report("d1", 0.5, cost_usd=0.01) is False
    events = recorder.spool.read_after(0, 10)
    assert len(events) == 1 and math.isclose(events[0].cost_usd, 0.01)
    assert recorder.counters.repeated == 1


async def test_unknown_and_expired_decisions_are_not_found(recorder):
    with pytest.raises(NotFound, match="decision_id"):
        await recorder.report("nope", 0.5)
    recorder.remember(decision("d2"))
    recorder.clock.now += 61
    with pytest.raises(NotFound):
        await recorder.report("d2", 0.5)


@pytest.mark.parametrize(
    ("quality", "cost", "field"),
    [
        (float("nan"), None, "quality"),
        (-0.1, None, "quality"),
        (1.01, None, "quality"),
        (0.5, -1.0, "cost_usd"),
    ],
)
async def test_bad_outcomes_are_invalid_arguments_naming_the_field(recorder, quality, cost, field):
    recorder.remember(decision("d3"))
    with pytest.raises(InvalidArgument) as info:
        await recorder.report("d3", quality, cost)
    assert info.value.field == field
    assert await recorder.report("d3", 0.5) is True  # nothing was consumed by the bad call


async def test_expiry_drops_or_defaults_and_is_counted(recorder):
    recorder.remember(decision("old"))
    recorder.clock.now += 61
    assert await recorder.sweep() == 1
    assert recorder.counters.expired_dropped == 1
    assert recorder.spool.read_after(0, 10) == []

    recorder.expiry_action = "default_quality"
    recorder.default_quality = 0.25
    recorder.remember(decision("old2"))
    recorder.clock.now += 61
    assert await recorder.sweep() == 1
    (event,) = recorder.spool.read_after(0, 10)
    assert event.quality_defaulted and math.isclose(event.quality, 0.25)
    assert recorder.counters.expired_defaulted == 1
    assert await recorder.report("old2", 0.9) is False  # already recorded with the default


async def test_store_is_bounded_and_evicts_oldest_as_expired(recorder):
    for i in range(5):
        recorder.remember(decision(f"d{i}"))
    assert len(recorder.store) == 3
    assert recorder.store.take("d0") == LookupResult.UNKNOWN
    assert await recorder.sweep() == 2
    assert recorder.counters.expired_dropped == 2


async def test_spool_full_refuses_and_keeps_the_decision_pending(tmp_path):
    spool = RewardSpool(tmp_path / "tiny", 1 << 16, 0.5)
    await spool.start()
    rec = OutcomeRecorder(PendingDecisionStore(60.0, 10_000), spool, "sc", "drop", 0.0)
    recorded = 0
    with pytest.raises(SpoolFull):
        for i in range(10_000):
            rec.remember(decision(f"x{i}"))
            await rec.report(f"x{i}", 0.5)
            recorded += 1
    assert rec.counters.refused_spool_full == 1
    assert rec.store.get(f"x{recorded}") is not None
    assert len(spool.read_after(0, 100_000)) == recorded
    await spool.close()


async def test_completion_cost_is_attached_and_a_fallback_answer_is_not_learned(recorder):
    recorder.remember(decision("chosen-answered"))
    recorder.remember(decision("fallback-answered"))
    recorder.record_completion("chosen-answered", "strong", 0.0042, 812.0)
    recorder.record_completion("fallback-answered", "cheap", 0.0001, 95.0)
    recorder.record_completion("unknown", "strong", 0.1, 1.0)  # no pending decision: ignored
    assert await recorder.report("chosen-answered", 0.8) is True
    assert await recorder.report("fallback-answered", 0.8) is True  # acknowledged ...
    (event,) = recorder.spool.read_after(0, 10)  # ... but only the chosen model's outcome is an event
    assert event.event_id == "chosen-answered" and math.isclose(event.cost_usd, 0.0042)
    assert recorder.counters.skipped_fallback == 1
    assert await recorder.report("fallback-answered", 0.8) is False
