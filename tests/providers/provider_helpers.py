"""Helpers shared by the provider tests: catalog entries pointing at a fake provider, requests, ports, a
recorder that keeps every completion."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from barp_sidecar.providers.catalog import ProviderEntry
from barp_sidecar.providers.chat import ChatMessage, ChatRequest, GenerationParameters, TokenUsage
from barp_sidecar.settings import ProvidersSettings

TEST_KEY = "sk-test-0123456789abcdefSECRET"
# Fast retries so fault tests take milliseconds.
FAST_SETTINGS = ProvidersSettings(
    retry_initial_backoff_ms=1.0, retry_max_backoff_ms=5.0, breaker_failure_threshold=0
)


def entry_for(model: str, base_url: str, **overrides: object) -> ProviderEntry:
    fields: dict[str, object] = dict(
        model=model,
        enabled=True,
        api_style="openai",
        base_url=base_url,
        upstream_model=f"upstream-{model}",
        api_key_env="FAKE_KEY",
        input_usd_per_1m_tokens=1.0,
        output_usd_per_1m_tokens=2.0,
        max_concurrency=8,
        timeout_s=10.0,
    )
    fields.update(overrides)
    return ProviderEntry(**fields)  # type: ignore[arg-type]


def chat(text: str = "hello there", **parameters: object) -> ChatRequest:
    return ChatRequest((ChatMessage("user", text),), GenerationParameters(**parameters))  # type: ignore[arg-type]


def closed_port() -> int:
    """A loopback port with nothing listening (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class CompletionRecord:
    model: str
    cost_usd: float
    latency_ms: float
    usage: TokenUsage


class RecordingCompletions:
    """A ``CompletionRecorder`` for tests: every record by decision id."""

    def __init__(self) -> None:
        self.records: dict[str, CompletionRecord] = {}

    def record_completion(
        self, decision_id: str, model: str, cost_usd: float, latency_ms: float, usage: TokenUsage
    ) -> None:
        self.records[decision_id] = CompletionRecord(model, cost_usd, latency_ms, usage)

    def get(self, decision_id: str) -> CompletionRecord | None:
        return self.records.get(decision_id)

    def __len__(self) -> int:
        return len(self.records)
