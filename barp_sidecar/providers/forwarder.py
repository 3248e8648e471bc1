"""Fallback orchestration: answer with the routed model, or the next most probable allowed one.

Owns the order in which models are tried for one Complete call and what the caller is told: which model
answered, which failed first (``fallback_from``), the text deltas, and at the end the usage, cost and
provider latency, which are also handed to the ``CompletionRecorder`` (if any) with the decision id.

Rules: the routed model must have an enabled provider (else ``ProviderNotConfigured`` → FAILED_PRECONDITION
naming it). When it fails before its first token (after the pool's retries), the next allowed model by
descending policy probability with an enabled provider is tried, up to ``max_fallbacks`` of them. A failure
after the first token is not hidden by a fallback (the caller already has part of an answer): it ends the
call. ``DeadlineExceeded`` is never turned into a fallback.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Collection, Sequence
from dataclasses import dataclass

import structlog
from opentelemetry.trace import NoOpTracer, Span, SpanKind, Tracer

from barp_sidecar.domain import Decision
from barp_sidecar.policy.mask import models_in
from barp_sidecar.providers.catalog import ModelCatalog
from barp_sidecar.providers.chat import ChatRequest, TokenUsage, ToolCallDelta
from barp_sidecar.providers.failures import (
    AllProvidersFailed,
    ProviderFailure,
    ProviderNotConfigured,
    ProviderQueueFull,
)
from barp_sidecar.providers.metrics import NO_FALLBACK_TARGET, ProviderMetrics
from barp_sidecar.providers.pool import ProviderPool
from barp_sidecar.providers.pricing import complete_usage, cost_usd
from barp_sidecar.providers.recorder import CompletionRecorder
from barp_sidecar.tracing import set_error


@dataclass(frozen=True)
class AnswerStarted:
    """The first content arrived from ``model``; ``fallback_from`` failed before it, in order.

    ``decision`` is what routing chose (``decision.model``); ``model`` differs from it after a fallback."""

    decision: Decision
    model: str
    fallback_from: tuple[str, ...]


@dataclass(frozen=True)
class TextDelta:
    text: str
    # True when the provider finished with this text (it arrived with the finish reason): a transport may
    # hold it for the Completed event that follows at once and send both in one message.
    final: bool = False


@dataclass(frozen=True)
class ToolCallsDelta:
    """Pieces of the tool calls the model is making (OpenAI's streamed ``delta.tool_calls``)."""

    calls: tuple[ToolCallDelta, ...]


@dataclass(frozen=True)
class Completed:
    model: str
    finish_reason: str
    usage: TokenUsage
    cost_usd: float
    provider_latency_ms: float
    fallback_from: tuple[str, ...]


ForwardEvent = AnswerStarted | TextDelta | ToolCallsDelta | Completed


def fallback_order(
    chosen: str,
    probabilities: Sequence[tuple[str, float]],
    allowed: Collection[str] | None,
    max_fallbacks: int,
    is_enabled: Callable[[str], bool],
) -> list[str]:
    """``chosen`` first, then up to ``max_fallbacks`` other allowed, enabled models by descending probability.

    Ties keep the policy's model order (the sort is stable). Models with probability 0 (masked) are skipped.
    """
    permitted = set(allowed) if allowed else None
    others = [
        (model, p)
        for model, p in probabilities
        if model != chosen and p > 0.0 and (permitted is None or model in permitted) and is_enabled(model)
    ]
    others.sort(key=lambda item: -item[1])
    return [chosen] + [model for model, _ in others[:max_fallbacks]]


class Forwarder:
    def __init__(
        self,
        catalog: ModelCatalog,
        pool: ProviderPool,
        recorder: CompletionRecorder | None,
        metrics: ProviderMetrics,
        max_fallbacks: int,
        clock: Callable[[], float] = time.monotonic,
        tracer: Tracer | None = None,
    ) -> None:
        self._catalog = catalog
        self._tracer = tracer or NoOpTracer()
        self._pool = pool
        self._recorder = recorder
        self._metrics = metrics
        self._max_fallbacks = max_fallbacks
        self._clock = clock
        self._log = structlog.get_logger("barp.providers")

    def set_catalog(self, catalog: ModelCatalog) -> None:
        """Use ``catalog`` (reloaded, with every model the old one had a provider for) from the next call."""
        self._catalog = catalog

    def check_available(self, chosen: str) -> None:
        """Raise ProviderNotConfigured when the routed model has no enabled provider."""
        if not self._pool.is_enabled(chosen):
            raise ProviderNotConfigured(chosen)

    async def forward(
        self,
        *,
        decision: Decision,
        request: ChatRequest,
        deadline_s: float | None,
    ) -> AsyncGenerator[ForwardEvent, None]:
        """Yield AnswerStarted, (TextDelta | ToolCallsDelta)*, Completed (failures: see the module docstring).

        Fallbacks stay inside the decision's mask (``decision.allowed``, computed once by routing).
        ``deadline_s`` is absolute on the forwarder's (and pool's) clock; None = only per-attempt timeouts.
        """
        decision_id = decision.decision_id
        self.check_available(decision.model)
        candidates = fallback_order(
            decision.model,
            tuple(zip(decision.models, decision.probabilities, strict=True)),
            models_in(decision.models, decision.allowed) if decision.allowed else None,
            self._max_fallbacks,
            self._pool.is_enabled,
        )
        failures: list[ProviderFailure] = []
        for position, model in enumerate(candidates):
            next_model = candidates[position + 1] if position + 1 < len(candidates) else NO_FALLBACK_TARGET
            attributes: dict[str, str | int] = {
                "barp.model": model,
                "barp.fallback_index": position,
                "barp.decision_id": decision_id,
            }
            # Current while this model is called: the pool's retries are events on it.
            with self._tracer.start_as_current_span(
                "barp.provider.call", kind=SpanKind.CLIENT, attributes=attributes, record_exception=True
            ) as span:
                fallback_from = tuple(f.model for f in failures)
                started = False
                parts: list[str] = []
                input_tokens: int | None = None
                output_tokens: int | None = None
                finish_reason = ""
                started_s = self._clock()
                first_token_s: float | None = None
                try:
                    async with contextlib.aclosing(self._pool.stream(model, request, deadline_s)) as events:
                        async for event in events:
                            if event.input_tokens is not None:
                                input_tokens = event.input_tokens
                            if event.output_tokens is not None:
                                output_tokens = event.output_tokens
                            if event.finish_reason is not None:
                                finish_reason = event.finish_reason
                            if not started and event.has_content:
                                started = True
                                first_token_s = self._clock()
                                ttft_ms = (first_token_s - started_s) * 1000
                                span.set_attribute("barp.time_to_first_token_ms", ttft_ms)
                                yield AnswerStarted(decision, model, fallback_from)
                            if event.tool_calls:
                                parts.extend(call.arguments for call in event.tool_calls)
                                yield ToolCallsDelta(event.tool_calls)
                            if event.delta:
                                parts.append(event.delta)
                                yield TextDelta(event.delta, final=event.finish_reason is not None)
                except ProviderQueueFull as exc:
                    failures.append(ProviderFailure(model, "queue_full", str(exc), retryable=False))
                    self._fell_back(model, next_model, "queue_full", span, str(exc))
                    continue
                except ProviderFailure as failure:
                    if started:
                        self._metrics.completions.labels(model, "broken").inc()
                        raise
                    failures.append(failure)
                    self._fell_back(model, next_model, failure.kind, span, str(failure))
                    continue
                ended_s = self._clock()
                latency_ms = (ended_s - started_s) * 1000.0
                if not started:
                    yield AnswerStarted(decision, model, fallback_from)
                first_token_s = ended_s if first_token_s is None else first_token_s
                usage = complete_usage(input_tokens, output_tokens, request.messages, "".join(parts))
                entry = self._catalog.entry(model)
                cost = cost_usd(usage, entry.input_usd_per_1m_tokens, entry.output_usd_per_1m_tokens)
                if self._recorder is not None:
                    self._recorder.record_completion(decision_id, model, cost, latency_ms, usage)
                self._observe(model, usage, cost, latency_ms, fallback_from)
                self._observe_timing(model, first_token_s - started_s, ended_s - first_token_s, usage)
                span.set_attributes(
                    {
                        "barp.latency_ms": latency_ms,
                        "barp.input_tokens": usage.input_tokens,
                        "barp.output_tokens": usage.output_tokens,
                        "barp.cost_usd": cost,
                        "barp.finish_reason": finish_reason or "stop",
                    }
                )
                yield Completed(model, finish_reason or "stop", usage, cost, latency_ms, fallback_from)
                return
        self._metrics.completions.labels(decision.model, "failed").inc()
        raise AllProvidersFailed(failures)

    def _fell_back(self, model: str, next_model: str, kind: str, span: Span, detail: str) -> None:
        self._metrics.fallbacks.labels(model, next_model).inc()
        set_error(span, kind, detail)
        span.add_event("fallback", {"barp.from_model": model, "barp.to_model": next_model, "barp.kind": kind})
        self._log.warning("provider_failed_before_answer", model=model, next_model=next_model, kind=kind)

    def _observe_timing(
        self, model: str, first_token_s: float, after_first_s: float, usage: TokenUsage
    ) -> None:
        """Time to first token, and the mean time per output token after it (when there were two or more)."""
        metrics = self._metrics.for_model(model)
        metrics.time_to_first_token.observe(first_token_s)
        if usage.output_tokens > 1:
            metrics.time_per_output_token.observe(after_first_s / (usage.output_tokens - 1))

    def _observe(
        self, model: str, usage: TokenUsage, cost: float, latency_ms: float, fallback_from: tuple[str, ...]
    ) -> None:
        metrics = self._metrics.for_model(model)
        (metrics.completions_fallback if fallback_from else metrics.completions_ok).inc()
        metrics.latency.observe(latency_ms / 1000.0)
        metrics.cost.inc(cost)
        metrics.input_tokens.inc(usage.input_tokens)
        metrics.output_tokens.inc(usage.output_tokens)
