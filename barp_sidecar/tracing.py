"""OpenTelemetry tracing of one process: its tracer provider, W3C trace context in, trace ids in the logs.

Owns building the tracer from ``TracingSettings`` (off by default: a no-op tracer, nothing exported), the
span processor and exporter (OTLP/gRPC from the optional ``otlp`` extra, the console, or one injected by
tests), extracting ``traceparent``/``tracestate`` from gRPC metadata or HTTP headers, and ``server_span``,
which makes a request's span current and binds its ``trace_id`` into structlog's context so every log line
of that request carries it. No global tracer provider is installed: components get ``Tracing.tracer``
from the composition root. What each span records is decided where the work happens (transports,
routing, forwarding, the trainer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from barp_sidecar.errors import ConfigError
from barp_sidecar.settings import TracingSettings

_PROPAGATOR = TraceContextTextMapPropagator()
INSTRUMENTATION_NAME = "barp_sidecar"


def _exporter(settings: TracingSettings, key_prefix: str) -> SpanExporter:
    if settings.exporter == "console":
        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError(
            f"{key_prefix}.exporter",
            "'otlp' needs the OTLP exporter: pip install 'barp-sidecar[otlp]' (or use 'console')",
        ) from None
    endpoint = settings.otlp_endpoint
    return OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))


class Tracing:
    """The tracer of one process and the provider behind it (None when tracing is off)."""

    def __init__(self, tracer: Tracer, provider: TracerProvider | None = None) -> None:
        self.tracer = tracer
        self._provider = provider

    @classmethod
    def disabled(cls) -> Tracing:
        return cls(trace.NoOpTracer())

    @classmethod
    def from_settings(
        cls, settings: TracingSettings, *, exporter: SpanExporter | None = None, key_prefix: str = "tracing"
    ) -> Tracing:
        """Off unless ``settings.enabled``. ``exporter`` replaces the configured one (tests: in-memory),
        and is flushed span by span so a test sees each span when it ends."""
        if not settings.enabled:
            return cls.disabled()
        provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            provider.add_span_processor(BatchSpanProcessor(_exporter(settings, key_prefix)))
        return cls(provider.get_tracer(INSTRUMENTATION_NAME), provider)

    @property
    def enabled(self) -> bool:
        return self._provider is not None

    def close(self) -> None:
        """Export what is buffered and stop (bounded by the SDK's export timeout). Idempotent."""
        if self._provider is not None:
            provider, self._provider = self._provider, None
            provider.shutdown()


def extract_context(carrier: Mapping[str, str]) -> Context:
    """The caller's W3C trace context (``traceparent``, ``tracestate``); empty when absent or malformed."""
    return _PROPAGATOR.extract(carrier)


def grpc_metadata_carrier(metadata: Any) -> dict[str, str]:
    """gRPC invocation metadata (key/value pairs, keys lower-case) as a propagation carrier."""
    return {key: value for key, value in metadata or () if isinstance(value, str)}


@contextlib.contextmanager
def server_span(
    tracer: Tracer, name: str, parent: Context | None, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A SERVER span, current for the block, with ``trace_id`` bound in every log line of the block.

    Exceptions are recorded on the span and re-raised. With the no-op tracer nothing is bound.
    """
    with (
        tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes, record_exception=True
        ) as span,
        logged_with(span),
    ):
        yield span


@contextlib.contextmanager
def logged_with(span: Span) -> Iterator[None]:
    """Bind the span's ``trace_id`` and ``span_id`` into structlog's context (nothing if invalid)."""
    context = span.get_span_context()
    if not context.is_valid:
        yield
        return
    with structlog.contextvars.bound_contextvars(
        trace_id=trace.format_trace_id(context.trace_id), span_id=trace.format_span_id(context.span_id)
    ):
        yield


def set_error(span: Span, code: str, message: str = "") -> None:
    """Mark a span failed with the transport's status (``INVALID_ARGUMENT``, ``503``, ...)."""
    span.set_attribute("barp.status_code", code)
    span.set_status(Status(StatusCode.ERROR, message[:200] or code))
