"""Forwarder: fallback order, fallback on failure, usage and cost accounting, recording."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from barp_sidecar.domain import Decision, ExplorationMode
from barp_sidecar.errors import DeadlineExceeded
from barp_sidecar.providers.catalog import ModelCatalog, ProviderEntry
from barp_sidecar.providers.chat import ChatRequest, TokenUsage
from barp_sidecar.providers.failures import AllProvidersFailed, ProviderFailure, ProviderNotConfigured
from barp_sidecar.providers.fake_server import FakeBehaviour, FakeProvider
from barp_sidecar.providers.forwarder import (
    AnswerStarted,
    Completed,
    Forwarder,
    ForwardEvent,
    TextDelta,
    fallback_order,
)
from barp_sidecar.providers.metrics import ProviderMetrics
from barp_sidecar.providers.pool import ProviderPool
from barp_sidecar.settings import ProvidersSettings
from tests.providers.provider_helpers import RecordingCompletions, chat, closed_port, entry_for

MakePool = Callable[..., Awaitable[ProviderPool]]
PROBABILITIES = [("a", 0.5), ("b", 0.1), ("c", 0.3), ("d", 0.1), ("e", 0.0)]


def test_fallback_order_is_by_probability_among_allowed_enabled_models() -> None:
    enabled = {"a", "b", "c", "d", "e"}.__contains__
    assert fallback_order("a", PROBABILITIES, None, 10, enabled) == ["a", "c", "b", "d"]  # e is masked (p=0)
    assert fallback_order("a", PROBABILITIES, None, 1, enabled) == ["a", "c"]
    assert fallback_order("a", PROBABILITIES, None, 0, enabled) == ["a"]
    assert fallback_order("b", PROBABILITIES, ["b", "d", "a"], 10, enabled) == ["b", "a", "d"]
    assert fallback_order("a", PROBABILITIES, None, 10, {"a", "b"}.__contains__) == ["a", "b"]


def decision_for(chosen: str = "a", allowed: list[str] | None = None, decision_id: str = "d-1") -> Decision:
    """A routing decision over PROBABILITIES; ``allowed`` None = every model (the mask routing computed)."""
    models = tuple(name for name, _ in PROBABILITIES)
    return Decision(
        decision_id=decision_id,
        model=chosen,
        propensity=1.0,
        models=models,
        probabilities=tuple(p for _, p in PROBABILITIES),
        policy_version=1,
        encoder="hash:8",
        exploration=ExplorationMode.GREEDY,
        quality_weight=0.5,
        embedding=np.zeros(8, dtype=np.float32),
        allowed=tuple(allowed is None or name in allowed for name in models),
    )


async def run(
    forwarder: Forwarder,
    request: ChatRequest,
    chosen: str = "a",
    allowed: list[str] | None = None,
    deadline_s: float | None = None,
) -> list[ForwardEvent]:
    decision = decision_for(chosen, allowed)
    return [
        event async for event in forwarder.forward(decision=decision, request=request, deadline_s=deadline_s)
    ]


def build(
    pool: ProviderPool, entries: list[ProviderEntry], metrics: ProviderMetrics, max_fallbacks: int = 2
) -> tuple[Forwarder, RecordingCompletions]:
    recorder = RecordingCompletions()
    return Forwarder(ModelCatalog(tuple(entries)), pool, recorder, metrics, max_fallbacks), recorder


async def test_a_healthy_call_streams_and_records_cost(
    fake: FakeProvider, make_pool: MakePool, metrics: ProviderMetrics
) -> None:
    entries = [entry_for("a", fake.base_url, input_usd_per_1m_tokens=10.0, output_usd_per_1m_tokens=30.0)]
    forwarder, recorder = build(await make_pool(entries), entries, metrics)
    events = await run(forwarder, chat("two words"))
    assert events[0] == AnswerStarted(decision_for(), "a", ())
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "".join(
        f"tok{i} " for i in range(8)
    )
    done = events[-1]
    assert isinstance(done, Completed)
    assert done.usage == TokenUsage(6, 8, estimated=False)  # the fake counts words + 4 per message
    assert done.cost_usd == pytest.approx((6 * 10.0 + 8 * 30.0) / 1e6)
    assert done.finish_reason == "stop" and done.provider_latency_ms > 0
    record = recorder.get("d-1")
    assert record is not None
    assert (record.model, record.cost_usd, record.usage) == ("a", done.cost_usd, done.usage)
    assert record.latency_ms == done.provider_latency_ms


async def test_missing_usage_is_estimated_and_flagged(
    fake: FakeProvider, make_pool: MakePool, metrics: ProviderMetrics
) -> None:
    entries = [entry_for("a", fake.base_url)]
    forwarder, _ = build(await make_pool(entries), entries, metrics)
    fake.push(FakeBehaviour(usage=False, tokens=4))
    done = (await run(forwarder, chat("x" * 40)))[-1]
    assert isinstance(done, Completed)
    assert done.usage == TokenUsage(10 + 4, 5, estimated=True)  # "tokN " × 4 = 20 chars -> 5


async def test_connection_refused_falls_back_to_the_next_most_probable(
    fake: FakeProvider, make_pool: MakePool, metrics: ProviderMetrics
) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    entries = [entry_for("a", dead), entry_for("b", fake.base_url), entry_for("c", dead)]
    forwarder, recorder = build(await make_pool(entries), entries, metrics)
    events = await run(forwarder, chat())
    # c (p=0.3) is tried before b (p=0.1); both a and c refuse connections.
    assert events[0] == AnswerStarted(decision_for(), "b", ("a", "c"))
    done = events[-1]
    assert isinstance(done, Completed) and done.model == "b" and done.fallback_from == ("a", "c")
    record = recorder.get("d-1")
    assert record is not None and record.model == "b"
    # Each fallback names where it came from and where it went.
    assert metrics.fallbacks.labels("a", "c")._value.get() == 1
    assert metrics.fallbacks.labels("c", "b")._value.get() == 1
    sample = metrics.registry.get_sample_value
    assert sample("barp_completion_time_to_first_token_seconds_count", {"model": "b"}) == 1
    assert sample("barp_completion_time_per_output_token_seconds_count", {"model": "b"}) == 1  # 8 tokens
    assert not sample("barp_completion_time_to_first_token_seconds_count", {"model": "a"})


async def test_every_provider_failing_is_unavailable_with_each_reason(
    make_pool: MakePool, metrics: ProviderMetrics
) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    entries = [entry_for(model, dead) for model in "abc"]
    forwarder, recorder = build(await make_pool(entries), entries, metrics)
    with pytest.raises(AllProvidersFailed) as caught:
        await run(forwarder, chat())
    assert [f.model for f in caught.value.failures] == ["a", "c", "b"]
    assert "model 'a' failed (connect)" in str(caught.value)
    assert len(recorder) == 0


async def test_an_unconfigured_chosen_model_is_a_failed_precondition(
    fake: FakeProvider, make_pool: MakePool, metrics: ProviderMetrics
) -> None:
    entries = [entry_for("a", "", enabled=False), entry_for("b", fake.base_url)]
    forwarder, _ = build(await make_pool(entries), entries, metrics)
    with pytest.raises(ProviderNotConfigured, match="'a'"):
        await run(forwarder, chat())
    assert fake.stats.requests == 0


async def test_a_failure_after_the_first_token_is_not_hidden_by_a_fallback(
    fake: FakeProvider, make_pool: MakePool, metrics: ProviderMetrics
) -> None:
    entries = [entry_for("a", fake.base_url), entry_for("c", fake.base_url)]
    forwarder, recorder = build(await make_pool(entries), entries, metrics)
    fake.push(FakeBehaviour(malformed="truncated", tokens=2))
    seen: list[ForwardEvent] = []
    with pytest.raises(ProviderFailure, match="stream ended"):
        async for event in forwarder.forward(decision=decision_for(), request=chat(), deadline_s=None):
            seen.append(event)
    assert seen[0] == AnswerStarted(decision_for(), "a", ())
    assert "".join(e.text for e in seen[1:] if isinstance(e, TextDelta)) == "tok0 tok1 "
    assert fake.stats.requests == 1 and len(recorder) == 0


async def test_a_deadline_is_not_turned_into_a_fallback(
    fake: FakeProvider, make_pool: MakePool, metrics: ProviderMetrics
) -> None:
    entries = [entry_for("a", fake.base_url), entry_for("c", fake.base_url)]
    forwarder, _ = build(await make_pool(entries), entries, metrics)
    fake.push(FakeBehaviour(hang=True))
    with pytest.raises(DeadlineExceeded):
        await run(forwarder, chat(), deadline_s=time.monotonic() + 0.2)
    await fake.wait_idle()
    assert fake.stats.requests == 1 and fake.stats.cancelled == 1


async def test_allowed_models_bound_the_fallbacks(
    make_pool: MakePool, metrics: ProviderMetrics, fake: FakeProvider
) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    entries = [entry_for("a", dead), entry_for("c", fake.base_url), entry_for("d", dead)]
    forwarder, _ = build(await make_pool(entries), entries, metrics)
    with pytest.raises(AllProvidersFailed) as caught:
        await run(forwarder, chat(), allowed=["a", "d"])
    assert [f.model for f in caught.value.failures] == ["a", "d"]
    assert fake.stats.requests == 0


async def test_an_open_breaker_falls_back_without_calling_the_provider(
    fake: FakeProvider, make_pool: MakePool, metrics: ProviderMetrics
) -> None:
    async with FakeProvider() as other:
        entries = [entry_for("a", fake.base_url), entry_for("c", other.base_url)]
        settings = ProvidersSettings(max_attempts=1, breaker_failure_threshold=1, breaker_open_s=60)
        forwarder, _ = build(await make_pool(entries, settings), entries, metrics)
        fake.push(FakeBehaviour(status=503))
        first = await run(forwarder, chat())  # a fails once: its breaker opens; c answers
        assert first[0] == AnswerStarted(decision_for(), "c", ("a",))
        second = await run(forwarder, chat())
        assert second[0] == AnswerStarted(decision_for(), "c", ("a",))
        assert fake.stats.requests == 1 and other.stats.requests == 2  # a was not called again
