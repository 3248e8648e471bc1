"""Prometheus metrics of forwarding, registered on the app's own ``CollectorRegistry`` (no global one).

Owns the metric names and labels; the pool and the forwarder call the small methods below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_INTERVAL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
# Fallback target when no model was left to try.
NO_FALLBACK_TARGET = "none"


@dataclass(frozen=True)
class ModelMetrics:
    """The labelled children one model uses on every call, resolved once (``labels()`` is not free)."""

    attempts_ok: Any
    retries: Any
    completions_ok: Any
    completions_fallback: Any
    latency: Any
    time_to_first_token: Any
    time_per_output_token: Any
    cost: Any
    input_tokens: Any
    output_tokens: Any


class ProviderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._per_model: dict[str, ModelMetrics] = {}
        self.attempts = Counter(
            "barp_provider_attempts",
            "Provider HTTP attempts by model and outcome (ok, connect, timeout, http_status, protocol, ...)",
            ["model", "outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "barp_provider_retries",
            "Attempts repeated after a retryable failure",
            ["model"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "barp_provider_fallbacks",
            "Complete calls that moved on from a failed model to the next most probable one "
            "(to_model 'none': no model was left to try)",
            ["from_model", "to_model"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "barp_provider_in_flight",
            "Calls holding a provider concurrency slot",
            ["model"],
            registry=registry,
        )
        self.queued = Gauge(
            "barp_provider_queued",
            "Calls waiting for a provider concurrency slot",
            ["model"],
            registry=registry,
        )
        self.breaker_open = Gauge(
            "barp_provider_breaker_open",
            "1 while a provider's circuit breaker is open",
            ["model"],
            registry=registry,
        )
        self.completions = Counter(
            "barp_completions",
            "Complete calls by answering model and outcome",
            ["model", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "barp_completion_provider_latency_seconds",
            "Provider call latency of completed calls (first attempt to last byte)",
            ["model"],
            buckets=_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "barp_completion_time_to_first_token_seconds",
            "From the first attempt to the answering model to its first token (retries included)",
            ["model"],
            buckets=_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.time_per_output_token = Histogram(
            "barp_completion_time_per_output_token_seconds",
            "Mean interval between output tokens after the first, per completed call",
            ["model"],
            buckets=_TOKEN_INTERVAL_BUCKETS_S,
            registry=registry,
        )
        self.cost = Counter(
            "barp_completion_cost_usd",
            "Cost of completed calls in USD (catalog prices)",
            ["model"],
            registry=registry,
        )
        self.tokens = Counter(
            "barp_completion_tokens", "Tokens of completed calls", ["model", "direction"], registry=registry
        )

    def for_model(self, model: str) -> ModelMetrics:
        cached = self._per_model.get(model)
        if cached is None:
            cached = ModelMetrics(
                attempts_ok=self.attempts.labels(model, "ok"),
                retries=self.retries.labels(model),
                completions_ok=self.completions.labels(model, "ok"),
                completions_fallback=self.completions.labels(model, "fallback"),
                latency=self.latency.labels(model),
                time_to_first_token=self.time_to_first_token.labels(model),
                time_per_output_token=self.time_per_output_token.labels(model),
                cost=self.cost.labels(model),
                input_tokens=self.tokens.labels(model, "input"),
                output_tokens=self.tokens.labels(model, "output"),
            )
            self._per_model[model] = cached
        return cached
