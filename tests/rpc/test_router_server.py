"""A real in-process sidecar on 127.0.0.1:0 called through a real gRPC channel."""

from __future__ import annotations

import asyncio
import math
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from tests.support.sidecar import ARMS, running_sidecar, sidecar_settings

PROMPTS = [f"question {i}: what is {i} times {i * 7 % 13} in base {2 + i % 9}?" for i in range(40)]


def route_request(prompt: str = "hello", weight: float | None = 0.5, **fields) -> router_pb2.RouteRequest:
    if weight is not None:
        fields["preference"] = router_pb2.Preference(quality_weight=weight)
    return router_pb2.RouteRequest(prompt=prompt, **fields)


async def call(
    port: int, request: router_pb2.RouteRequest, timeout_s: float = 10.0
) -> router_pb2.RouteResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        return await router_pb2_grpc.RouterStub(channel).Route(request, timeout=timeout_s)


async def rpc_error(port: int, request: router_pb2.RouteRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(port, request)
    return caught.value


async def test_route_returns_a_complete_decision(checkpoint: Path) -> None:
    async with running_sidecar(sidecar_settings(checkpoint)) as app:
        response = await call(
            app.port, route_request("What is the capital of France?", 0.8, request_id="r-1")
        )
    assert len(response.decision_id) == 32
    assert response.model in ARMS
    assert [p.model for p in response.probabilities] == list(ARMS)
    assert math.isclose(sum(p.probability for p in response.probabilities), 1.0, rel_tol=1e-5)
    best = max(response.probabilities, key=lambda p: p.probability)
    assert response.model == best.model and response.propensity == 1.0
    assert response.policy_version == 1 and response.encoder == "hash:32"
    assert response.exploration == router_pb2.EXPLORATION_GREEDY
    assert response.quality_weight == pytest.approx(0.8)


async def test_defaults_apply_when_preference_and_exploration_are_absent(checkpoint: Path) -> None:
    settings = sidecar_settings(checkpoint, routing={"default_quality_weight": 0.3})
    async with running_sidecar(settings) as app:
        response = await call(app.port, route_request(weight=None))
    assert response.quality_weight == pytest.approx(0.3)
    assert response.exploration == router_pb2.EXPLORATION_GREEDY


async def test_allowed_models_restrict_the_choice(checkpoint: Path) -> None:
    async with running_sidecar(sidecar_settings(checkpoint)) as app:
        responses = await asyncio.gather(
            *(
                call(app.port, route_request(p, allowed_models=["small-model", "large-model"]))
                for p in PROMPTS[:10]
            )
        )
    for response in responses:
        assert response.model in ("small-model", "large-model")
        masked = {p.model: p.probability for p in response.probabilities}
        assert masked["medium-model"] == 0.0 and masked["huge-model"] == 0.0


async def test_sample_mode_reports_the_propensity_of_the_sampled_model(checkpoint: Path) -> None:
    async with running_sidecar(sidecar_settings(checkpoint)) as app:
        responses = await asyncio.gather(
            *(call(app.port, route_request(p, exploration=router_pb2.EXPLORATION_SAMPLE)) for p in PROMPTS)
        )
    for response in responses:
        probability = {p.model: p.probability for p in response.probabilities}[response.model]
        assert response.exploration == router_pb2.EXPLORATION_SAMPLE
        assert response.propensity == pytest.approx(probability, rel=1e-6) and response.propensity > 0


async def test_epsilon_greedy_propensity_follows_the_contract(checkpoint: Path) -> None:
    settings = sidecar_settings(checkpoint, routing={"epsilon": 0.5})
    async with running_sidecar(settings) as app:
        responses = await asyncio.gather(
            *(
                call(app.port, route_request(p, exploration=router_pb2.EXPLORATION_EPSILON_GREEDY))
                for p in PROMPTS
            )
        )
    for response in responses:
        greedy = max(response.probabilities, key=lambda p: p.probability).model
        expected = (0.5 if response.model == greedy else 0.0) + 0.5 / len(ARMS)
        assert response.propensity == pytest.approx(expected)


async def test_batched_and_unbatched_decisions_are_identical(checkpoint: Path) -> None:
    async def decide_all(max_batch_size: int) -> list[router_pb2.RouteResponse]:
        settings = sidecar_settings(
            checkpoint, batching={"max_batch_size": max_batch_size, "max_wait_ms": 5.0}
        )
        async with running_sidecar(settings) as app:
            return await asyncio.gather(
                *(call(app.port, route_request(p, 0.1 * (i % 11))) for i, p in enumerate(PROMPTS))
            )

    batched, unbatched = await decide_all(32), await decide_all(1)
    assert len({r.model for r in batched}) > 1, "the tiny policy should not answer one model for everything"
    for one, other in zip(batched, unbatched, strict=True):
        assert one.model == other.model
        for a, b in zip(one.probabilities, other.probabilities, strict=True):
            assert a.probability == pytest.approx(b.probability, abs=1e-6)


async def test_500_concurrent_calls_are_all_answered_correctly(checkpoint: Path) -> None:
    async with running_sidecar(sidecar_settings(checkpoint)) as app:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            requests = [route_request(f"prompt number {i}", (i % 5) / 4) for i in range(500)]
            responses = await asyncio.wait_for(
                asyncio.gather(*(stub.Route(r, timeout=30) for r in requests)), timeout=60
            )
            # Each answer is the one for its own prompt: repeat a sample one by one and compare.
            for index in range(0, 500, 50):
                again = await stub.Route(requests[index], timeout=10)
                assert again.model == responses[index].model
                assert [p.probability for p in again.probabilities] == pytest.approx(
                    [p.probability for p in responses[index].probabilities], abs=1e-6
                )
    assert len({r.decision_id for r in responses}) == 500
    assert {r.quality_weight for r in responses} == {0.0, 0.25, 0.5, 0.75, 1.0}


BAD_INPUTS = [
    ("empty prompt", route_request(""), grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    (
        "NaN weight",
        route_request(weight=float("nan")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "preference.quality_weight",
    ),
    (
        "negative weight",
        route_request(weight=-0.1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "preference.quality_weight",
    ),
    (
        "weight above 1",
        route_request(weight=1.5),
        grpc.StatusCode.INVALID_ARGUMENT,
        "preference.quality_weight",
    ),
    ("unknown model", route_request(allowed_models=["gpt-17"]), grpc.StatusCode.INVALID_ARGUMENT, "gpt-17"),
    (
        "duplicate model",
        route_request(allowed_models=["small-model", "small-model"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "duplicate model 'small-model'",
    ),
    (
        "every model masked",
        route_request(allowed_models=["huge-model"]),
        grpc.StatusCode.FAILED_PRECONDITION,
        "no allowed model",
    ),
    ("invalid exploration", route_request(exploration=7), grpc.StatusCode.INVALID_ARGUMENT, "exploration"),
    (
        "request id too long",
        route_request(request_id="x" * 129),
        grpc.StatusCode.INVALID_ARGUMENT,
        "request_id",
    ),
]


async def test_bad_inputs_get_clear_statuses_and_the_server_keeps_serving(checkpoint: Path) -> None:
    settings = sidecar_settings(checkpoint, routing={"disabled_models": "huge-model"})
    async with running_sidecar(settings) as app:
        for name, request, code, needle in BAD_INPUTS:
            error = await rpc_error(app.port, request)
            assert error.code() == code, name
            assert needle in error.details(), (name, error.details())
        ok = await call(app.port, route_request("still here"))
        assert ok.model != "huge-model"


async def test_prompt_over_the_limit_is_invalid_argument(checkpoint: Path) -> None:
    settings = sidecar_settings(checkpoint, server={"max_prompt_bytes": 1000, "max_message_bytes": 1 << 20})
    async with running_sidecar(settings) as app:
        error = await rpc_error(app.port, route_request("é" * 501))  # 1002 UTF-8 bytes
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "prompt: is 1002 bytes; the limit is 1000" in error.details()
        assert (await call(app.port, route_request("é" * 500))).model in ARMS


async def test_default_prompt_limit_is_one_mebibyte(checkpoint: Path) -> None:
    async with running_sidecar(sidecar_settings(checkpoint)) as app:
        error = await rpc_error(app.port, route_request("a" * ((1 << 20) + 1)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "prompt" in error.details()


async def test_calls_beyond_max_pending_are_refused_and_none_hang(checkpoint: Path) -> None:
    settings = sidecar_settings(checkpoint, batching={"max_pending": 50, "max_batch_size": 16})
    async with running_sidecar(settings) as app:
        assert app.batcher is not None
        # Occupy the one inference thread so the 50 admitted calls stay pending while the flood arrives.
        gate = threading.Event()
        blocker = asyncio.ensure_future(app.batcher.call_in_worker(lambda: gate.wait(30)))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            calls = [
                asyncio.ensure_future(stub.Route(route_request(f"flood {i}"), timeout=30))
                for i in range(1050)
            ]
            # The refusals come back at once; the admitted 50 cannot finish while the thread is blocked.
            finished, _ = await asyncio.wait(calls, timeout=30, return_when=asyncio.FIRST_EXCEPTION)
            done_count = len(finished)
            while done_count < 1000:
                more, _ = await asyncio.wait(
                    [c for c in calls if not c.done()], timeout=5, return_when="FIRST_COMPLETED"
                )
                assert more, "refusals must not hang"
                done_count += len(more)
            assert app.batcher.pending == 50
            gate.set()
            results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=30)
        await blocker
        ok = [r for r in results if isinstance(r, router_pb2.RouteResponse)]
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert (len(ok), len(refused)) == (50, 1000)
        assert {
            (e.code(), e.details(), e.debug_error_string())
            for e in refused
            if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED
        } == set()
        assert all("batching.max_pending=50" in e.details() for e in refused)
        assert app.metrics.admission_rejections._value.get() == 1000
        assert app.batcher.pending == 0
        assert (await call(app.port, route_request("after the flood"))).model in ARMS


# The hash encoder tokenises ~1 MB of words in ~0.1 s on the worker thread: a realistically slow request.
SLOW_PROMPT = "word " * 200_000


def batch_samples(app) -> dict[str, float]:
    return {s.name: s.value for s in app.metrics.batch_size.collect()[0].samples}


async def start_slow_calls(app, stub, count: int) -> list[asyncio.Future]:
    """Start ``count`` slow calls and return once the server has admitted at least two of them, so the
    inference thread has ~0.1 s of work ahead of anything sent next."""
    calls = [
        asyncio.ensure_future(stub.Route(route_request(f"{SLOW_PROMPT} {i}"), timeout=30))
        for i in range(count)
    ]
    for _ in range(500):
        if app.batcher.pending >= 2:
            return calls
        await asyncio.sleep(0.01)
    raise AssertionError("the slow calls never reached the server")


async def test_caller_cancelling_mid_queue_is_skipped(checkpoint: Path) -> None:
    async with running_sidecar(sidecar_settings(checkpoint)) as app:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            slow = await start_slow_calls(app, stub, 3)
            doomed = stub.Route(route_request("I will hang up"), timeout=30)
            kept = stub.Route(route_request("I will wait"), timeout=30)
            await asyncio.sleep(0.02)
            doomed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await doomed
            assert (await kept).model in ARMS
            assert all(r.model in ARMS for r in await asyncio.gather(*slow))
        assert app.batcher is not None and app.batcher.pending == 0
        assert (
            batch_samples(app)["barp_batch_size_sum"] == 4.0
        )  # 3 slow + kept: the cancelled call was skipped


async def test_deadline_expiring_in_queue_is_deadline_exceeded_and_not_computed(checkpoint: Path) -> None:
    async with running_sidecar(sidecar_settings(checkpoint)) as app:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            slow = await start_slow_calls(app, stub, 3)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Route(route_request("too slow for me"), timeout=0.05)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert all(r.model in ARMS for r in await asyncio.gather(*slow))
            assert (await stub.Route(route_request("patient"), timeout=5)).model in ARMS
        assert batch_samples(app)["barp_batch_size_sum"] == 4.0  # 3 slow + patient: the expired one never ran


async def test_already_expired_deadline_is_deadline_exceeded_and_not_computed(checkpoint: Path) -> None:
    """A 1 ms deadline has passed by the time the call reaches the server or a batch (the exact
    "expired on arrival" branch is unit-tested in tests/batching and tests/routing)."""
    async with running_sidecar(sidecar_settings(checkpoint)) as app:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            slow = await start_slow_calls(app, stub, 2)
            for _ in range(5):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Route(route_request("late"), timeout=0.001)
                assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert all(r.model in ARMS for r in await asyncio.gather(*slow))
            assert (await stub.Route(route_request("on time"), timeout=5)).model in ARMS
        assert batch_samples(app)["barp_batch_size_sum"] == 3.0  # 2 slow + on time: no expired call ran


async def test_health_goes_serving_then_not_serving(checkpoint: Path) -> None:
    app_cm = running_sidecar(sidecar_settings(checkpoint))
    app = await app_cm.__aenter__()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "barp.v1.Router"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(service="barp.v1.Router"), timeout=10)
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            assert app.grpc is not None
            await app.grpc.set_not_serving()
            second = await watch.read()
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
    finally:
        await app_cm.__aexit__(None, None, None)


async def test_reflection_lists_the_router(checkpoint: Path) -> None:
    async with running_sidecar(sidecar_settings(checkpoint)) as app:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            async for response in responses:
                names = {s.name for s in response.list_services_response.service}
                break
    assert {"barp.v1.Router", "grpc.health.v1.Health"} <= names


async def test_report_outcome_of_an_unknown_decision_is_not_found(checkpoint: Path) -> None:
    # ReportOutcome arrived with the learning loop (tests/rewards/test_sidecar_learning.py covers the rest).
    async with running_sidecar(sidecar_settings(checkpoint)) as app:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ReportOutcome(router_pb2.OutcomeRequest(decision_id="x", quality=1.0), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "decision_id" in caught.value.details()


async def test_metrics_endpoint_exposes_counters_after_traffic(checkpoint: Path) -> None:
    async with running_sidecar(sidecar_settings(checkpoint)) as app:
        for prompt in ("alpha", "beta", "alpha"):
            await call(app.port, route_request(prompt))
        await rpc_error(app.port, route_request(""))
        body = await asyncio.to_thread(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=5)
                .read()
                .decode()
            )
        )
    assert 'barp_requests_total{code="OK",method="Route"} 3.0' in body
    assert 'barp_requests_total{code="INVALID_ARGUMENT",method="Route"} 1.0' in body
    assert "barp_decisions_total{model=" in body
    assert "barp_batch_size_count" in body and "barp_queue_wait_seconds_count" in body
    assert "barp_inference_seconds_count" in body and "barp_request_latency_seconds_count" in body
    assert "barp_embedding_cache_hits_total 1.0" in body
    assert "barp_admission_rejections_total 0.0" in body
    assert "barp_policy_version 1.0" in body


async def test_two_sidecars_in_one_process_have_separate_metrics(checkpoint: Path, tmp_path: Path) -> None:
    # Each sidecar needs its own spool (the directory is locked).
    second = sidecar_settings(checkpoint, rewards={"spool_dir": str(tmp_path / "second-spool")})
    async with (
        running_sidecar(sidecar_settings(checkpoint)) as one,
        running_sidecar(second) as two,
    ):
        assert one.port != two.port and one.metrics_port != two.metrics_port
        await call(one.port, route_request("only one"))
        ok_one = one.metrics.requests.labels("Route", "OK")._value.get()
        ok_two = two.metrics.requests.labels("Route", "OK")._value.get()
    assert (ok_one, ok_two) == (1.0, 0.0)
