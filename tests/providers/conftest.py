"""Fixtures for the provider tests: an in-process fake provider, metrics, started pools."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry

from barp_sidecar.providers.catalog import ModelCatalog, ProviderEntry
from barp_sidecar.providers.metrics import ProviderMetrics
from barp_sidecar.providers.pool import ProviderPool
from barp_sidecar.settings import ProvidersSettings
from tests.providers.provider_helpers import FAST_SETTINGS, TEST_KEY


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
