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

from barp_sidecar.domain import Decision
from barp_sidecar.policy.mask import models_in
from barp_sidecar.providers.catalog import ModelCatalog
from barp_sidecar.providers.chat import ChatRequest, TokenUsage
from barp_sidecar.providers.failures import (
    AllProvidersFailed,
    ProviderFailure,
    ProviderNotConfigured,
    ProviderQueueFull,
)
from barp_sidecar.providers.metrics import ProviderMetrics
from barp_sidecar.providers.pool import ProviderPool
from barp_sidecar.providers.pricing import complete_usage, cost_usd
from barp_sidecar.providers.recorder import CompletionRecorder


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
class Completed:
    model: str
    finish_reason: str
    usage: TokenUsage
    cost_usd: float
    provider_latency_ms: float
    fallback_from: tuple[str, ...]


ForwardEvent = AnswerStarted | TextDelta | Completed


def fallback_order(
    chosen: str,
    probabilities: Sequence[tuple[str, float]],
    allowed: Collection[str] | None,
    max_fallbacks: int,
    is_enabled: Callable[[str], bool],
) -> list[str]:
    """``chosen`` first, then up to ``max_fallbacks`` other allowed, enabled models by descending probability.

    Ties keep the policy's arm order (the sort is stable). Models with probability 0 (masked) are skipped.
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
    ) -> None:
        self._catalog = catalog
        self._pool = pool
        self._recorder = recorder
        self._metrics = metrics
        self._max_fallbacks = max_fallbacks
        self._clock = clock
        self._log = structlog.get_logger("barp.providers")

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
        """Yield AnswerStarted, TextDelta*, Completed for one call (see the module docstring for failures).

        Fallbacks stay inside the decision's mask (``decision.allowed``, computed once by routing).
        ``deadline_s`` is absolute on the forwarder's (and pool's) clock; None = only per-attempt timeouts.
        """
        decision_id = decision.decision_id
        self.check_available(decision.model)
        candidates = fallback_order(
            decision.model,
            tuple(zip(decision.arms, decision.probabilities, strict=True)),
            models_in(decision.arms, decision.allowed) if decision.allowed else None,
            self._max_fallbacks,
            self._pool.is_enabled,
        )
        failures: list[ProviderFailure] = []
        for model in candidates:
            fallback_from = tuple(f.arm for f in failures)
            started = False
            parts: list[str] = []
            input_tokens: int | None = None
            output_tokens: int | None = None
            finish_reason = ""
            started_s = self._clock()
            try:
                async with contextlib.aclosing(self._pool.stream(model, request, deadline_s)) as events:
                    async for event in events:
                        if event.input_tokens is not None:
                            input_tokens = event.input_tokens
                        if event.output_tokens is not None:
                            output_tokens = event.output_tokens
                        if event.finish_reason is not None:
                            finish_reason = event.finish_reason
                        if not started and (event.delta or event.finish_reason is not None):
                            started = True
                            yield AnswerStarted(decision, model, fallback_from)
                        if event.delta:
                            parts.append(event.delta)
                            yield TextDelta(event.delta, final=event.finish_reason is not None)
            except ProviderQueueFull as exc:
                failures.append(ProviderFailure(model, "queue_full", str(exc), retryable=False))
                self._fell_back(model, "queue_full")
                continue
            except ProviderFailure as failure:
                if started:
                    self._metrics.completions.labels(model, "broken").inc()
                    raise
                failures.append(failure)
                self._fell_back(model, failure.kind)
                continue
            latency_ms = (self._clock() - started_s) * 1000.0
            if not started:
                yield AnswerStarted(decision, model, fallback_from)
            usage = complete_usage(input_tokens, output_tokens, request.messages, "".join(parts))
            entry = self._catalog.entry(model)
            cost = cost_usd(usage, entry.input_usd_per_1m_tokens, entry.output_usd_per_1m_tokens)
            if self._recorder is not None:
                self._recorder.record_completion(decision_id, model, cost, latency_ms, usage)
            self._observe(model, usage, cost, latency_ms, fallback_from)
            yield Completed(model, finish_reason or "stop", usage, cost, latency_ms, fallback_from)
            return
        self._metrics.completions.labels(decision.model, "failed").inc()
        raise AllProvidersFailed(failures)

    def _fell_back(self, model: str, kind: str) -> None:
        self._metrics.fallbacks.labels(model).inc()
        self._log.warning("provider_failed_before_answer", model=model, kind=kind)

    def _observe(
        self, model: str, usage: TokenUsage, cost: float, latency_ms: float, fallback_from: tuple[str, ...]
    ) -> None:
        metrics = self._metrics.for_model(model)
        (metrics.completions_fallback if fallback_from else metrics.completions_ok).inc()
        metrics.latency.observe(latency_ms / 1000.0)
        metrics.cost.inc(cost)
        metrics.input_tokens.inc(usage.input_tokens)
        metrics.output_tokens.inc(usage.output_tokens)
