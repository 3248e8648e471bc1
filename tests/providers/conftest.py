"""Fixtures for the provider tests: an in-process fake provider, catalogs pointing at it, a pool."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry

from barp_sidecar.providers.catalog import ModelCatalog, ProviderEntry
from barp_sidecar.providers.chat import ChatMessage, ChatRequest, GenerationParameters
from barp_sidecar.providers.fake_server import FakeProvider, FakeProviderOptions
from barp_sidecar.providers.metrics import ProviderMetrics
from barp_sidecar.providers.pool import ProviderPool
from barp_sidecar.settings import ProvidersSettings

TEST_KEY = "sk-test-0123456789abcdefSECRET"
# Fast retries so fault tests take milliseconds.
FAST_SETTINGS = ProvidersSettings(
    retry_initial_backoff_ms=1.0, retry_max_backoff_ms=5.0, breaker_failure_threshold=0
)


def entry_for(arm: str, base_url: str, **overrides: object) -> ProviderEntry:
    fields: dict[str, object] = dict(
        arm=arm,
        enabled=True,
        api_style="openai",
        base_url=base_url,
        upstream_model=f"upstream-{arm}",
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


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider(FakeProviderOptions()) as provider:
        yield provider


@pytest.fixture
def metrics() -> ProviderMetrics:
    return ProviderMetrics(CollectorRegistry())


@pytest.fixture
async def make_pool(metrics: ProviderMetrics) -> AsyncIterator[Callable[..., Awaitable[ProviderPool]]]:
    """Factory: ``await make_pool(entries, settings)`` -> a started ProviderPool, closed after the test."""
    pools: list[ProviderPool] = []

    async def build(
        entries: list[ProviderEntry], settings: ProvidersSettings = FAST_SETTINGS
    ) -> ProviderPool:
        pool = ProviderPool(
            ModelCatalog(tuple(entries)), settings, {"FAKE_KEY": TEST_KEY}, metrics, rng=random.Random(7)
        )
        pools.append(pool)
        await pool.start()
        return pool

    yield build
    for pool in pools:
        await pool.close()
