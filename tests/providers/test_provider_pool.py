"""ProviderPool against a real in-process fake provider over loopback HTTP: retries, faults, limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from structlog.testing import capture_logs

from barp_sidecar.errors import DeadlineExceeded
from barp_sidecar.providers.chat import ChatRequest, StreamEvent
from barp_sidecar.providers.failures import ProviderFailure, ProviderNotConfigured, ProviderQueueFull
from barp_sidecar.providers.fake_server import FakeBehaviour, FakeProvider, FakeProviderOptions
from barp_sidecar.providers.metrics import ProviderMetrics
from barp_sidecar.providers.pool import ProviderPool
from barp_sidecar.settings import ProvidersSettings
from tests.providers.provider_helpers import FAST_SETTINGS, TEST_KEY, chat, closed_port, entry_for

MakePool = Callable[..., Awaitable[ProviderPool]]


async def collect(
    pool: ProviderPool, model: str, request: ChatRequest, deadline_s: float | None = None
) -> list[StreamEvent]:
    return [event async for event in pool.stream(model, request, deadline_s)]


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.delta for e in events)


async def test_streams_tokens_finish_and_usage(fake: FakeProvider, make_pool: MakePool) -> None:
    pool = await make_pool([entry_for("m", fake.base_url)])
    events = await collect(pool, "m", chat("one two three"))
    assert text_of(events) == "".join(f"tok{i} " for i in range(8))
    assert [e.finish_reason for e in events if e.finish_reason] == ["stop"]
    assert [(e.input_tokens, e.output_tokens) for e in events if e.input_tokens is not None] == [(7, 8)]
    body = fake.stats.bodies[-1]
    assert body["model"] == "upstream-m" and body["stream"] is True


async def test_anthropic_style_end_to_end(fake: FakeProvider, make_pool: MakePool) -> None:
    pool = await make_pool([entry_for("c", fake.base_url, api_style="anthropic")])
    events = await collect(pool, "c", chat("hi", max_tokens=3))
    assert text_of(events) == "tok0 tok1 tok2 "
    assert [e.finish_reason for e in events if e.finish_reason] == ["length"]
    assert fake.stats.bodies[-1]["max_tokens"] == 3


async def test_500_then_200_is_retried(fake: FakeProvider, make_pool: MakePool) -> None:
    pool = await make_pool([entry_for("m", fake.base_url)])
    fake.push(FakeBehaviour(status=500), FakeBehaviour(status=503))
    with capture_logs() as logs:
        events = await collect(pool, "m", chat())
    assert text_of(events).startswith("tok0")
    assert fake.stats.requests == 3
    assert [log["status"] for log in logs if log["event"] == "provider_retry"] == [500, 503]


async def test_429_with_retry_after_is_honoured(fake: FakeProvider, make_pool: MakePool) -> None:
    pool = await make_pool([entry_for("m", fake.base_url)])
    fake.push(FakeBehaviour(status=429, retry_after="0.3"))
    started = time.monotonic()
    events = await collect(pool, "m", chat())
    assert time.monotonic() - started >= 0.3
    assert text_of(events).startswith("tok0") and fake.stats.requests == 2


async def test_a_retry_after_beyond_the_cap_is_not_waited_for(
    fake: FakeProvider, make_pool: MakePool
) -> None:
    settings = ProvidersSettings(retry_initial_backoff_ms=1, retry_max_backoff_ms=5, retry_after_max_s=1.0)
    pool = await make_pool([entry_for("m", fake.base_url)], settings)
    fake.push(FakeBehaviour(status=429, retry_after="60"))
    started = time.monotonic()
    with pytest.raises(ProviderFailure) as caught:
        await collect(pool, "m", chat())
    # Not waited for: far below the 60 s asked (a bound that a busy machine cannot break).
    assert time.monotonic() - started < 30.0
    assert caught.value.status == 429 and caught.value.retry_after_s == 60.0


async def test_retries_stop_after_max_attempts(fake: FakeProvider, make_pool: MakePool) -> None:
    pool = await make_pool([entry_for("m", fake.base_url)])
    fake.push(*[FakeBehaviour(status=502)] * 5)
    with pytest.raises(ProviderFailure, match="HTTP 502") as caught:
        await collect(pool, "m", chat())
    assert caught.value.kind == "http_status" and fake.stats.requests == FAST_SETTINGS.max_attempts


async def test_client_errors_are_not_retried(fake: FakeProvider, make_pool: MakePool) -> None:
    pool = await make_pool([entry_for("m", fake.base_url)])
    fake.push(FakeBehaviour(status=400))
    with pytest.raises(ProviderFailure, match="HTTP 400") as caught:
        await collect(pool, "m", chat())
    assert not caught.value.retryable and fake.stats.requests == 1


async def test_connection_refused_is_retried_then_fails(make_pool: MakePool) -> None:
    pool = await make_pool([entry_for("m", f"http://127.0.0.1:{closed_port()}/v1")])
    with pytest.raises(ProviderFailure) as caught:
        await collect(pool, "m", chat())
    assert caught.value.kind == "connect" and caught.value.retryable


@pytest.mark.parametrize("mode", ["json", "sse", "truncated", "body"])
@pytest.mark.parametrize("style", ["openai", "anthropic"])
async def test_malformed_responses_are_clear_failures(
    fake: FakeProvider, make_pool: MakePool, mode: str, style: str
) -> None:
    pool = await make_pool([entry_for("m", fake.base_url, api_style=style)])
    fake.push(FakeBehaviour(malformed=mode))
    with pytest.raises(ProviderFailure) as caught:
        await collect(pool, "m", chat())
    assert caught.value.kind == "protocol"
    assert "model 'm' failed (protocol)" in str(caught.value)
    # Not retried (a malformed answer is not transient), and the pool keeps serving.
    assert fake.stats.requests == 1
    assert text_of(await collect(pool, "m", chat())).startswith("tok0")


async def test_a_non_streamed_json_answer_is_accepted(fake: FakeProvider, make_pool: MakePool) -> None:
    pool = await make_pool([entry_for("m", fake.base_url)])
    request = chat()
    # A server that ignores stream: true answers with one JSON body; emulate by asking without streaming.
    from barp_sidecar.providers.openai_adapter import OpenAIAdapter

    original = OpenAIAdapter.build_request

    def non_streaming(self: OpenAIAdapter, *args: object):  # type: ignore[no-untyped-def]
        http = original(self, *args)  # type: ignore[arg-type]
        http.body["stream"] = False
        return http

    OpenAIAdapter.build_request = non_streaming  # type: ignore[method-assign]
    try:
        events = await collect(pool, "m", request)
    finally:
        OpenAIAdapter.build_request = original  # type: ignore[method-assign]
    assert text_of(events) == "".join(f"tok{i} " for i in range(8))
    assert any(e.output_tokens == 8 for e in events)


async def test_a_hang_past_the_deadline_cancels_the_upstream_request(
    fake: FakeProvider, make_pool: MakePool
) -> None:
    pool = await make_pool([entry_for("m", fake.base_url)])
    fake.push(FakeBehaviour(hang=True))
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await collect(pool, "m", chat(), deadline_s=time.monotonic() + 0.3)
    assert 0.25 <= time.monotonic() - started < 30.0  # the deadline, not the (endless) hang, ended it
    await fake.wait_idle()
    assert fake.stats.cancelled == 1


async def test_a_per_attempt_timeout_is_retried(fake: FakeProvider, make_pool: MakePool) -> None:
    pool = await make_pool([entry_for("m", fake.base_url, timeout_s=0.2)])
    fake.push(FakeBehaviour(hang=True))
    events = await collect(pool, "m", chat())
    assert text_of(events).startswith("tok0")
    await fake.wait_idle()
    assert fake.stats.cancelled == 1 and fake.stats.requests == 2


async def test_consumer_cancel_mid_stream_cancels_upstream(fake: FakeProvider, make_pool: MakePool) -> None:
    pool = await make_pool([entry_for("m", fake.base_url)])
    fake.push(FakeBehaviour(tokens=1000, token_interval_ms=5))
    received: list[str] = []
    three_received = asyncio.Event()

    async def consume() -> None:
        async for event in pool.stream("m", chat()):
            received.append(event.delta)
            if len(received) == 3:
                three_received.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(three_received.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await fake.wait_idle()
    assert fake.stats.cancelled == 1 and fake.stats.completed == 0
    assert pool.limiter("m").in_flight == 0


async def test_a_break_after_the_first_token_is_not_retried(fake: FakeProvider, make_pool: MakePool) -> None:
    pool = await make_pool([entry_for("m", fake.base_url)])
    fake.push(FakeBehaviour(malformed="truncated", tokens=3))
    with pytest.raises(ProviderFailure, match="stream ended before"):
        await collect(pool, "m", chat())
    assert fake.stats.requests == 1


async def test_unknown_or_disabled_arms_are_not_configured(fake: FakeProvider, make_pool: MakePool) -> None:
    pool = await make_pool([entry_for("m", fake.base_url), entry_for("off", fake.base_url, enabled=False)])
    for model in ("off", "nope"):
        assert not pool.is_enabled(model)
        with pytest.raises(ProviderNotConfigured, match=repr(model)):
            await collect(pool, model, chat())


async def test_the_api_key_never_reaches_errors_or_logs(fake: FakeProvider, make_pool: MakePool) -> None:
    pool = await make_pool([entry_for("m", fake.base_url)])
    fake.push(*[FakeBehaviour(status=503, echo_credentials=True)] * 3)  # retried, logged, fails
    fake.push(FakeBehaviour(status=401, echo_credentials=True))  # not retried, fails
    with capture_logs() as logs:
        for _ in range(2):
            with pytest.raises(ProviderFailure) as caught:
                await collect(pool, "m", chat())
            # The body's message (which echoed the key) is never quoted: only its type.
            assert "type=fake_error" in str(caught.value) and "Incorrect API key" not in str(caught.value)
            assert TEST_KEY not in str(caught.value) and TEST_KEY[:8] not in str(caught.value)
    assert logs, "the retries were logged"
    assert TEST_KEY not in repr(logs) and TEST_KEY[:8] not in repr(logs)
    assert TEST_KEY not in repr(pool.__dict__)


async def test_200_concurrent_calls_through_8_slots_none_lost(make_pool: MakePool) -> None:
    options = FakeProviderOptions(default=FakeBehaviour(tokens=4, latency_ms=5))
    async with FakeProvider(options) as fake:
        pool = await make_pool([entry_for("m", fake.base_url, max_concurrency=8)])
        results = await asyncio.wait_for(
            asyncio.gather(*(collect(pool, "m", chat(f"prompt {i}")) for i in range(200))), timeout=60
        )
        assert all(text_of(r) == "tok0 tok1 tok2 tok3 " for r in results)
        assert fake.stats.requests == 200 and fake.stats.completed == 200
        assert fake.stats.max_in_flight <= 8
        assert pool.limiter("m").max_in_flight_seen == 8
        assert pool.limiter("m").in_flight == 0 and pool.limiter("m").waiting == 0


async def test_queueing_beyond_the_bound_is_refused_at_once(make_pool: MakePool) -> None:
    options = FakeProviderOptions(default=FakeBehaviour(latency_ms=200))
    async with FakeProvider(options) as fake:
        settings = ProvidersSettings(max_queued_per_provider=3)
        pool = await make_pool([entry_for("m", fake.base_url, max_concurrency=2)], settings)
        outcomes = await asyncio.gather(
            *(collect(pool, "m", chat()) for _ in range(8)), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, ProviderQueueFull)]
        served = [o for o in outcomes if isinstance(o, list)]
        assert len(refused) == 3 and len(served) == 5
        assert "3 calls queued" in str(refused[0])


async def test_the_circuit_breaker_opens_and_recovers(
    fake: FakeProvider, make_pool: MakePool, metrics: ProviderMetrics
) -> None:
    settings = ProvidersSettings(
        max_attempts=1, breaker_failure_threshold=2, breaker_open_s=0.2, retry_initial_backoff_ms=1
    )
    now_s = [1000.0]  # the pool's clock: only this test moves it
    pool = await make_pool([entry_for("m", fake.base_url)], settings, clock=lambda: now_s[0])
    fake.push(FakeBehaviour(status=500), FakeBehaviour(status=500))
    for _ in range(2):
        with pytest.raises(ProviderFailure, match="HTTP 500"):
            await collect(pool, "m", chat())
    with pytest.raises(ProviderFailure) as caught:
        await collect(pool, "m", chat())
    assert caught.value.kind == "circuit_open" and fake.stats.requests == 2
    sample = metrics.registry.get_sample_value
    assert sample("barp_provider_breaker_open", {"model": "m"}) == 1.0
    assert sample("barp_provider_attempts_total", {"model": "m", "outcome": "http_status"}) == 2.0
    assert sample("barp_provider_attempts_total", {"model": "m", "outcome": "circuit_open"}) == 1.0
    now_s[0] += 0.1
    with pytest.raises(ProviderFailure, match="circuit"):  # still open within breaker_open_s
        await collect(pool, "m", chat())
    now_s[0] += 0.1
    assert text_of(await collect(pool, "m", chat())).startswith("tok0")  # the half-open probe succeeds
    assert pool.breaker("m").state == "closed"
    assert sample("barp_provider_breaker_open", {"model": "m"}) == 0.0


@pytest.mark.parametrize("style", ["openai", "anthropic"])
async def test_tokens_that_arrived_while_the_consumer_was_busy_come_as_one_event(
    fake: FakeProvider, make_pool: MakePool, style: str
) -> None:
    # The consumer (gRPC Complete) sends one message per event and reads the next only when that send is
    # done: whatever the provider streamed meanwhile is read at once and merged, in order, never held back.
    pool = await make_pool([entry_for("m", fake.base_url, api_style=style)])
    fake.push(FakeBehaviour(tokens=12, token_interval_ms=10))
    events: list[StreamEvent] = []
    async for event in pool.stream("m", chat()):
        if event.delta and not events:
            # A slow send: the provider finishes the other 11 tokens (10 ms apart) meanwhile.
            await fake.wait_idle()
            await asyncio.sleep(0.05)  # and loopback delivers its last bytes
        events.append(event)
    deltas = [e.delta for e in events if e.delta]
    assert deltas[0] == "tok0 " and len(deltas) == 2  # tok1..tok11 arrived during the pause: one event
    assert text_of(events) == "".join(f"tok{i} " for i in range(12))
    assert [e.finish_reason for e in events if e.finish_reason] == ["stop"]
    assert events[-1].output_tokens == 12
