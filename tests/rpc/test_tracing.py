"""OpenTelemetry spans of a real sidecar (gRPC and HTTP), captured with an in-memory exporter."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import structlog
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from structlog.testing import capture_logs

from barp_sidecar.app import SidecarApp
from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.providers.fake_server import FakeBehaviour, FakeProvider
from barp_sidecar.settings import TracingSettings
from barp_sidecar.tracing import Tracing
from tests.support.providers import FAST_RETRIES, all_live, write_catalog
from tests.support.sidecar import sidecar_settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"


async def traced_sidecar(
    checkpoint: Path, catalog: str, exporter: InMemorySpanExporter, enabled: bool = True
) -> SidecarApp:
    settings = sidecar_settings(
        checkpoint,
        providers={"catalog_file": catalog, **FAST_RETRIES, "max_fallbacks": 1},
        http={"enabled": True, "port": 0},
        tracing={"enabled": enabled},
    )
    app = SidecarApp.build(settings, env={}, span_exporter=exporter)
    await app.start()
    return app


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def complete_with_trace_context(app: SidecarApp) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        request = router_pb2.CompleteRequest(messages=[router_pb2.ChatMessage(role="user", content="hi")])
        chunks = [c async for c in stub.Complete(request, metadata=(("traceparent", TRACEPARENT),))]
    assert chunks[0].decision.decision_id and chunks[-1].HasField("usage")


async def test_grpc_complete_continues_the_callers_trace_with_route_and_provider_spans(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    app = await traced_sidecar(checkpoint, catalog, exporter)
    try:
        fake.push(FakeBehaviour(status=503))  # one retry, then the answer
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            await complete_with_trace_context(app)
        access = [e for e in logs if e["event"] == "rpc" and e["method"] == "Complete"]
        retries = [e for e in logs if e["event"] == "provider_retry"]
        assert len(access) == 1 and len(retries) == 1
        assert access[0]["trace_id"] == retries[0]["trace_id"] == TRACE_ID  # every line of the request
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            decision_id = access[0]["decision_id"]
            await stub.ReportOutcome(router_pb2.OutcomeRequest(decision_id=decision_id, quality=0.7))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Route(router_pb2.RouteRequest(prompt=""))
    finally:
        await app.close()
    spans = exporter.get_finished_spans()
    (server,) = by_name(spans, "barp.v1.Router/Complete")
    assert server.context is not None
    # The failed Route call has its own routing span; the Complete call's is the one under its span.
    (route,) = [
        s for s in by_name(spans, "barp.route") if s.parent and s.parent.span_id == server.context.span_id
    ]
    (call,) = by_name(spans, "barp.provider.call")
    assert server.kind == SpanKind.SERVER and call.kind == SpanKind.CLIENT
    # The caller's W3C trace continues: same trace id, the caller's span is the parent.
    assert {hex_trace(s) for s in (server, route, call)} == {TRACE_ID}
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_SPAN_ID
    assert call.parent is not None and call.parent.span_id == server.context.span_id
    routed = attributes(route)
    assert routed["barp.decision_id"] == decision_id and routed["barp.batch_size"] >= 1
    assert routed["barp.queue_wait_ms"] >= 0 and routed["barp.inference_ms"] > 0
    called = attributes(call)
    assert called["barp.time_to_first_token_ms"] > 0 and called["barp.output_tokens"] == 8
    assert [e.name for e in call.events] == ["retry"]
    assert attributes(server)["rpc.grpc.status_code"] == "OK"
    (outcome,) = by_name(spans, "barp.v1.Router/ReportOutcome")
    assert outcome.status.status_code != StatusCode.ERROR
    (bad,) = by_name(spans, "barp.v1.Router/Route")
    assert bad.status.status_code == StatusCode.ERROR
    assert attributes(bad)["rpc.grpc.status_code"] == "INVALID_ARGUMENT"


async def traced_chat_completion(app: SidecarApp) -> dict[str, Any]:
    """One chat completion over the HTTP API with the caller's ``traceparent``; expects a 200."""
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"http://127.0.0.1:{app.http_port}/v1/chat/completions",
            json={"model": "barp-auto", "messages": [{"role": "user", "content": "hello"}]},
            headers={"traceparent": TRACEPARENT},
        ) as response:
            assert response.status == 200
            body: dict[str, Any] = await response.json()
            return body


async def test_http_chat_span_records_fallback_and_logs_carry_the_trace_id(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    app = await traced_sidecar(checkpoint, catalog, exporter)
    try:
        fake.push(FakeBehaviour(status=400))  # not retryable: the routed model fails, a fallback answers
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            body = await traced_chat_completion(app)
    finally:
        await app.close()
    spans = exporter.get_finished_spans()
    (server,) = by_name(spans, "POST /v1/chat/completions")
    calls = by_name(spans, "barp.provider.call")
    assert hex_trace(server) == TRACE_ID and attributes(server)["http.response.status_code"] == 200
    assert len(calls) == 2 and all(hex_trace(c) == TRACE_ID for c in calls)
    failed, answered = sorted(calls, key=lambda c: attributes(c)["barp.fallback_index"])
    assert failed.status.status_code == StatusCode.ERROR
    (fallback,) = failed.events
    assert fallback.name == "fallback" and dict(fallback.attributes or {})["barp.to_model"] == body["model"]
    assert answered.status.status_code != StatusCode.ERROR
    # Every log line of the request carries its trace id: the access line and the fallback warning.
    request_logs = [e for e in logs if e["event"] in ("http", "provider_failed_before_answer")]
    assert len(request_logs) == 2 and {e.get("trace_id") for e in request_logs} == {TRACE_ID}


async def test_tracing_off_records_nothing_and_binds_no_trace_id(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    app = await traced_sidecar(checkpoint, catalog, exporter, enabled=False)
    try:
        assert not app.tracing.enabled
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            await traced_chat_completion(app)
    finally:
        await app.close()
    assert exporter.get_finished_spans() == ()
    assert [e for e in logs if "trace_id" in e] == []


class FakeCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector on 127.0.0.1 that keeps the span names it receives."""

    def __init__(self) -> None:
        self.span_names: list[str] = []

    def Export(self, request: Any, context: Any) -> Any:  # the generated base class names it
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.span_names += [span.name for span in scope_spans.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


def test_otlp_exporter_delivers_spans_to_a_collector() -> None:
    collector = FakeCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        settings = TracingSettings(enabled=True, exporter="otlp", otlp_endpoint=f"http://127.0.0.1:{port}")
        tracing = Tracing.from_settings(settings)
        with tracing.tracer.start_as_current_span("barp.test"):
            pass
        tracing.close()  # flushes the batch processor
        tracing.close()  # idempotent
    finally:
        server.stop(0)
    assert collector.span_names == ["barp.test"]
    console = Tracing.from_settings(TracingSettings(enabled=True, exporter="console"))
    assert console.enabled
    console.close()
    assert not Tracing.from_settings(TracingSettings()).enabled
