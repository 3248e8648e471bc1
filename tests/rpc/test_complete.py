"""Router.Complete through a real in-process sidecar and a real gRPC channel, against the fake provider."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from structlog.testing import capture_logs

from barp_sidecar.app import SidecarApp
from barp_sidecar.errors import ConfigError
from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.providers.fake_server import FakeBehaviour, FakeProvider, FakeProviderOptions
from tests.providers.provider_helpers import closed_port
from tests.support.providers import all_live, settings_for, sidecar, write_catalog
from tests.support.sidecar import ARMS

KEY = "sk-live-abcdef0123456789SECRET"


def complete_request(text: str = "What is 2 + 2?", **fields: Any) -> router_pb2.CompleteRequest:
    fields.setdefault("preference", router_pb2.Preference(quality_weight=0.5))
    return router_pb2.CompleteRequest(messages=[router_pb2.ChatMessage(role="user", content=text)], **fields)


async def complete(port: int, request: router_pb2.CompleteRequest, timeout_s: float = 10.0) -> list[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        return [chunk async for chunk in stub.Complete(request, timeout=timeout_s)]


async def complete_error(
    port: int, request: router_pb2.CompleteRequest, timeout_s: float = 10.0
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await complete(port, request, timeout_s)
    return caught.value


async def test_complete_streams_the_decision_text_usage_and_records_cost(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    async with sidecar(settings_for(checkpoint, catalog)) as app:
        chunks = await complete(app.port, complete_request("two words", request_id="r-9"))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            routed = await router_pb2_grpc.RouterStub(channel).Route(
                router_pb2.RouteRequest(
                    prompt="two words", preference=router_pb2.Preference(quality_weight=0.5)
                )
            )
        # Zero-latency fake: the whole answer arrives at once and is one chunk, both first and last.
        assert len(chunks) == 1
        first = last = chunks[0]
        assert first.HasField("decision") and last.HasField("usage")
        assert first.decision.model == routed.model  # the same batching path and policy as Route
        assert [p.model for p in first.decision.probabilities] == list(ARMS)
        assert first.delta.startswith("tok0 ") and list(first.fallback_from) == []
        assert "".join(c.delta for c in chunks) == "".join(f"tok{i} " for i in range(8))
        assert (last.usage.input_tokens, last.usage.output_tokens, last.usage.estimated) == (6, 8, False)
        assert last.usage.cost_usd == pytest.approx((6 * 1.0 + 8 * 2.0) / 1e6)
        assert last.finish_reason == "stop" and last.provider_latency_ms > 0
        assert fake.stats.bodies[-1]["model"] == f"up-{routed.model}"
        # The cost went into the pending decision: ReportOutcome after Complete needs no cost_usd.
        assert app.learning is not None and app.learning.recorder is not None
        pending = app.learning.recorder.store.get(first.decision.decision_id)
        assert pending is not None and pending.model == routed.model and pending.answered_by is None
        assert pending.cost_usd == pytest.approx(last.usage.cost_usd)


def completed_calls(app: SidecarApp) -> float:
    """Complete calls that finished with an answer (``barp_completions_total``, every model and outcome)."""
    return sum(
        sample.value
        for metric in app.metrics.registry.collect()
        if metric.name == "barp_completions"
        for sample in metric.samples
        if sample.name == "barp_completions_total" and sample.labels["outcome"] in ("ok", "fallback")
    )


async def test_tokens_stream_as_they_arrive(checkpoint: Path, fake: FakeProvider, tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    async with sidecar(settings_for(checkpoint, catalog)) as app:
        fake.push(FakeBehaviour(tokens=5, token_interval_ms=30))
        arrivals: list[tuple[float, Any]] = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            async for chunk in router_pb2_grpc.RouterStub(channel).Complete(complete_request(), timeout=10):
                arrivals.append((time.monotonic(), chunk))
    chunks = [chunk for _, chunk in arrivals]
    assert len(chunks) >= 4  # not buffered into one message
    assert chunks[0].HasField("decision") and chunks[0].delta == "tok0 "
    assert [c.HasField("decision") for c in chunks[1:]] == [False] * (len(chunks) - 1)
    assert [c.HasField("usage") for c in chunks[:-1]] == [False] * (len(chunks) - 1)
    assert chunks[-1].HasField("usage") and chunks[-1].finish_reason == "stop"
    assert "".join(c.delta for c in chunks) == "tok0 tok1 tok2 tok3 tok4 "
    # The first token reached the caller well before the last one was generated (~120 ms later).
    assert arrivals[-1][0] - arrivals[0][0] >= 0.09


@pytest.mark.parametrize("style", ["openai", "anthropic"])
async def test_a_burst_and_a_trickle_give_the_same_answer_in_fewer_messages(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path, style: str
) -> None:
    # Tokens read together travel as one message (never held back for later ones): text, order, usage and
    # finish reason are the same whether the provider bursts 24 tokens or trickles them 15 ms apart.
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url), api_style=style)
    answers = {}
    async with sidecar(settings_for(checkpoint, catalog)) as app:
        for name, interval_ms in (("burst", 0.0), ("trickle", 15.0)):
            fake.push(FakeBehaviour(tokens=24, token_interval_ms=interval_ms))
            answers[name] = await complete(app.port, complete_request(f"{name} please"))
    for chunks in answers.values():
        assert "".join(c.delta for c in chunks) == "".join(f"tok{i} " for i in range(24))
        assert [c.HasField("decision") for c in chunks] == [True] + [False] * (len(chunks) - 1)
        assert [c.HasField("usage") for c in chunks] == [False] * (len(chunks) - 1) + [True]
        assert [c.finish_reason for c in chunks] == [""] * (len(chunks) - 1) + ["stop"]
        assert chunks[-1].usage.output_tokens == 24 and not chunks[-1].usage.estimated
    burst, trickle = answers["burst"], answers["trickle"]
    assert len(burst) == 1  # the in-process fake wrote it all before the sidecar read: one read, one message
    assert len(trickle) >= 12  # one message per token, bar tokens that met a slow send
    assert burst[-1].usage.input_tokens == trickle[-1].usage.input_tokens


@pytest.mark.parametrize(
    ("mode", "routed_text"),
    [
        ("last_user", "and now?"),
        ("conversation", "system: terse\nuser: hello\nassistant: hi\nuser: and now?"),
    ],
)
async def test_the_routing_text_is_the_configured_part_of_the_conversation(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path, mode: str, routed_text: str
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    messages = [("system", "terse"), ("user", "hello"), ("assistant", "hi"), ("user", "and now?")]
    request = router_pb2.CompleteRequest(
        messages=[router_pb2.ChatMessage(role=r, content=c) for r, c in messages],
        preference=router_pb2.Preference(quality_weight=0.3),
    )
    async with sidecar(settings_for(checkpoint, catalog, routing_text=mode)) as app:
        chunks = await complete(app.port, request)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            routed = await router_pb2_grpc.RouterStub(channel).Route(
                router_pb2.RouteRequest(
                    prompt=routed_text, preference=router_pb2.Preference(quality_weight=0.3)
                )
            )
    assert [p.probability for p in chunks[0].decision.probabilities] == pytest.approx(
        [p.probability for p in routed.probabilities]
    )
    assert [m["role"] for m in fake.stats.bodies[-1]["messages"]] == ["system", "user", "assistant", "user"]


async def test_generation_parameters_are_passed_through(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    parameters = router_pb2.GenerationParameters(max_tokens=3, temperature=0.2, stop=["\n"], seed=5)
    async with sidecar(settings_for(checkpoint, catalog)) as app:
        chunks = await complete(app.port, complete_request(parameters=parameters))
    body = fake.stats.bodies[-1]
    assert (body["max_tokens"], body["temperature"], body["stop"], body["seed"]) == (3, 0.2, ["\n"], 5)
    assert "top_p" not in body
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.output_tokens == 3


async def test_without_a_catalog_route_works_and_complete_is_failed_precondition(checkpoint: Path) -> None:
    async with sidecar(settings_for(checkpoint, None)) as app:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            routed = await router_pb2_grpc.RouterStub(channel).Route(router_pb2.RouteRequest(prompt="hi"))
        assert routed.model in ARMS
        error = await complete_error(app.port, complete_request())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no provider is configured" in error.details() and ARMS[0] in error.details()


async def test_an_allowed_but_unconfigured_model_is_named(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    urls: dict[str, str | None] = {model: fake.base_url for model in ARMS[:2]}  # ARMS[2:] disabled
    catalog = write_catalog(tmp_path / "c.yaml", urls)
    async with sidecar(settings_for(checkpoint, catalog)) as app:
        error = await complete_error(app.port, complete_request(allowed_models=[ARMS[3]]))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and repr(ARMS[3]) in error.details()
        # Without a restriction, routing only considers models it can call.
        for text in ("a", "b", "c", "d", "e"):
            chunks = await complete(app.port, complete_request(text))
            assert chunks[0].decision.model in ARMS[:2]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [router_pb2.ChatMessage(role="robot", content="x")]}, "messages[0].role"),
        ({"messages": [router_pb2.ChatMessage(role="user", content="")]}, "messages[0].content"),
        ({"allowed_models": ["no-such-model"]}, "allowed_models"),
        ({"preference": router_pb2.Preference(quality_weight=1.5)}, "preference.quality_weight"),
        ({"parameters": router_pb2.GenerationParameters(temperature=9.0)}, "parameters.temperature"),
        ({"exploration": 42}, "exploration"),
    ],
)
async def test_bad_requests_are_invalid_argument_naming_the_field(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path, request_fields: dict[str, Any], field: str
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    request = complete_request()
    for name, value in request_fields.items():
        if name == "messages":
            del request.messages[:]
            request.messages.extend(value)
        elif name == "allowed_models":
            request.allowed_models.extend(value)
        elif name == "exploration":
            request.exploration = value
        else:
            getattr(request, name).CopyFrom(value)
    async with sidecar(settings_for(checkpoint, catalog)) as app:
        error = await complete_error(app.port, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith(field)
        assert (await complete(app.port, complete_request()))[-1].finish_reason == "stop"  # still serving
    assert fake.stats.requests == 1


async def test_500_then_200_is_retried_and_429_retry_after_honoured(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    async with sidecar(settings_for(checkpoint, catalog)) as app:
        fake.push(FakeBehaviour(status=500))
        chunks = await complete(app.port, complete_request())
        assert list(chunks[0].fallback_from) == [] and fake.stats.requests == 2
        fake.push(FakeBehaviour(status=429, retry_after="0.3"))
        started = time.monotonic()
        chunks = await complete(app.port, complete_request())
        assert time.monotonic() - started >= 0.3
        assert list(chunks[-1].fallback_from) == [] and fake.stats.requests == 4


async def test_a_failing_model_falls_back_to_the_next_most_probable(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    async with sidecar(settings_for(checkpoint, catalog, max_attempts=2)) as app:
        fake.push(FakeBehaviour(status=503), FakeBehaviour(status=503))
        chunks = await complete(app.port, complete_request())
    decision = chunks[0].decision
    ranked = sorted(decision.probabilities, key=lambda p: -p.probability)
    assert list(chunks[0].fallback_from) == [ranked[0].model]
    assert decision.model == ranked[1].model  # the model that answered
    assert list(chunks[-1].fallback_from) == [ranked[0].model]
    assert fake.stats.requests == 3


async def test_connection_refused_falls_back(checkpoint: Path, fake: FakeProvider, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    urls: dict[str, str | None] = {model: dead for model in ARMS}
    catalog_all_dead = write_catalog(tmp_path / "dead.yaml", urls)
    async with sidecar(settings_for(checkpoint, catalog_all_dead, max_fallbacks=3)) as app:
        error = await complete_error(app.port, complete_request())
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details().count("(connect)") == 4
    # Now only the routed model is dead: the answer comes from a fallback.
    async with sidecar(
        settings_for(checkpoint, write_catalog(tmp_path / "live.yaml", all_live(fake.base_url)))
    ) as app:
        routed = (await complete(app.port, complete_request()))[0].decision.model
    urls = all_live(fake.base_url)
    urls[routed] = dead
    async with sidecar(settings_for(checkpoint, write_catalog(tmp_path / "mixed.yaml", urls))) as app:
        chunks = await complete(app.port, complete_request())
    assert list(chunks[0].fallback_from) == [routed] and chunks[0].decision.model != routed
    assert chunks[-1].finish_reason == "stop"


@pytest.mark.parametrize("mode", ["json", "sse"])
async def test_malformed_provider_output_is_a_clear_error(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path, mode: str
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    async with sidecar(settings_for(checkpoint, catalog, max_fallbacks=0)) as app:
        fake.push(FakeBehaviour(malformed=mode))
        error = await complete_error(app.port, complete_request())
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "(protocol)" in error.details()
        assert (await complete(app.port, complete_request()))[-1].finish_reason == "stop"


async def test_a_hang_past_the_deadline_is_deadline_exceeded_and_cancels_upstream(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    async with sidecar(settings_for(checkpoint, catalog)) as app:
        fake.push(FakeBehaviour(hang=True))
        started = time.monotonic()
        error = await complete_error(app.port, complete_request(), timeout_s=0.5)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 30.0  # the 0.5 s deadline, not the (endless) hang, ended it
        await fake.wait_idle()
        assert fake.stats.cancelled == 1 and fake.stats.requests == 1


async def test_a_stall_mid_answer_past_the_deadline_keeps_the_text_sent_and_cancels_upstream(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    async with sidecar(settings_for(checkpoint, catalog)) as app:
        fake.push(FakeBehaviour(tokens=10, token_interval_ms=20, hang_after_tokens=3))
        received: list[Any] = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            call = router_pb2_grpc.RouterStub(channel).Complete(complete_request(), timeout=0.8)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for chunk in call:
                    received.append(chunk)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "".join(c.delta for c in received) == "tok0 tok1 tok2 "
        assert received[0].HasField("decision")
        await fake.wait_idle()
        assert fake.stats.cancelled == 1 and completed_calls(app) == 0


async def test_client_cancel_mid_stream_cancels_upstream(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    async with sidecar(settings_for(checkpoint, catalog)) as app:
        fake.push(FakeBehaviour(tokens=2000, token_interval_ms=5))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            call = router_pb2_grpc.RouterStub(channel).Complete(complete_request(), timeout=30)
            received = 0
            async for _ in call:
                received += 1
                if received == 3:
                    call.cancel()
                    break
        await fake.wait_idle()
        assert fake.stats.cancelled == 1 and fake.stats.completed == 0
        assert completed_calls(app) == 0


async def test_the_api_key_never_appears_in_errors_or_logs(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url), api_key_env="FAKE_PROVIDER_KEY")
    settings = settings_for(checkpoint, catalog, max_fallbacks=1)
    with capture_logs() as logs:
        async with sidecar(settings, env={"FAKE_PROVIDER_KEY": KEY}) as app:
            fake.push(*[FakeBehaviour(status=503, echo_credentials=True)] * 3)
            fake.push(FakeBehaviour(status=401, echo_credentials=True))
            error = await complete_error(app.port, complete_request())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "type=fake_error" in error.details() and "Incorrect API key" not in error.details()
    assert KEY not in error.details() and KEY[:8] not in error.details()
    assert any(log.get("event") == "provider_retry" for log in logs)
    assert KEY not in repr(logs) and KEY[:8] not in repr(logs)


async def test_a_provider_error_body_echoing_the_prompt_is_never_logged_or_returned(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    prompt = "my-private-medical-question-about-aspirin"
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    settings = settings_for(checkpoint, catalog, max_fallbacks=1)
    with capture_logs() as logs:
        async with sidecar(settings) as app:
            # 422 is not retried: the chosen model and its one fallback both echo the request back.
            fake.push(*[FakeBehaviour(status=422, echo_request=True)] * 2)
            error = await complete_error(app.port, complete_request(prompt))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "HTTP 422: validation_errors=1 validation_types=string_too_long" in error.details()
    assert prompt not in error.details() and prompt not in str(error.trailing_metadata())
    assert logs and prompt not in repr(logs)


async def test_a_missing_key_or_a_mismatched_catalog_stops_startup(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url), api_key_env="FAKE_PROVIDER_KEY")
    with pytest.raises(ConfigError, match="FAKE_PROVIDER_KEY is not set"):
        SidecarApp.build(settings_for(checkpoint, catalog), env={})
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"providers": [{"arm": "someone-else", "enabled": False}]}))
    with pytest.raises(ConfigError, match="missing from the catalog") as caught:
        SidecarApp.build(settings_for(checkpoint, str(other)), env={})
    # The policy's models are named; the extra entry is not an error (a model about to join the pool).
    assert ARMS[0] in str(caught.value) and "someone-else" not in str(caught.value)


async def test_200_concurrent_completes_through_8_provider_slots_none_lost(
    checkpoint: Path, tmp_path: Path
) -> None:
    # 50 ms per answer keeps each slot busy long enough that routed batches always fill all 8 slots
    # (with near-instant answers the limit is not reliably reached on a loaded machine).
    async with FakeProvider(FakeProviderOptions(default=FakeBehaviour(tokens=4, latency_ms=50))) as fake:
        # One enabled model, limited to 8 concurrent calls: every Complete goes through its 8 slots.
        catalog = write_catalog(tmp_path / "c.yaml", {ARMS[0]: fake.base_url})
        settings = settings_for(checkpoint, catalog)
        async with sidecar(settings) as app:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                stub = router_pb2_grpc.RouterStub(channel)

                async def one(i: int) -> list[Any]:
                    return [c async for c in stub.Complete(complete_request(f"prompt {i}"), timeout=60)]

                results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 90)
            ids = {r[0].decision.decision_id for r in results}
            assert len(ids) == 200
            assert all("".join(c.delta for c in r) == "tok0 tok1 tok2 tok3 " for r in results)
            assert all(r[-1].usage.output_tokens == 4 for r in results)
            assert completed_calls(app) == 200
            url = f"http://127.0.0.1:{app.metrics_port}/metrics"
            metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        assert fake.stats.requests == 200 and fake.stats.completed == 200
        assert fake.stats.max_in_flight == 8  # bounded by the provider limit, and the limit was reached
    text = metrics.decode()
    assert 'barp_requests_total{code="OK",method="Complete"} 200.0' in text
    assert "barp_completion_cost_usd_total" in text and "barp_provider_attempts_total" in text


async def test_completion_cost_reaches_the_pending_decision_and_report_outcome_needs_no_cost(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    settings = settings_for(checkpoint, catalog, max_attempts=1)
    async with sidecar(settings) as app:
        assert app.learning is not None and app.learning.recorder is not None
        store = app.learning.recorder.store
        chunks = await complete(app.port, complete_request())
        decision_id, cost_usd = chunks[0].decision.decision_id, chunks[-1].usage.cost_usd
        pending = store.get(decision_id)
        assert pending is not None and pending.cost_usd == pytest.approx(cost_usd) and cost_usd > 0
        # A fallback answer is recorded as such: the outcome will not be learned from.
        fake.push(FakeBehaviour(status=503))
        fallback = await complete(app.port, complete_request())
        assert list(fallback[0].fallback_from)
        fell_back = store.get(fallback[0].decision.decision_id)
        assert fell_back is not None and fell_back.answered_by == fallback[0].decision.model
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            for chunk in (chunks[0], fallback[0]):
                request = router_pb2.OutcomeRequest(decision_id=chunk.decision.decision_id, quality=0.75)
                assert (await stub.ReportOutcome(request)).recorded
        assert app.learning.recorder.counters.skipped_fallback == 1
