"""Fixtures for the OpenAI-compatible HTTP API: a tiny policy, a fake provider, a sidecar with HTTP on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from barp_sidecar.app import SidecarApp
from barp_sidecar.providers.fake_server import FakeProvider
from tests.support.openai_http import http_sidecar
from tests.support.providers import all_live, write_catalog


@pytest.fixture
async def live(checkpoint: Path, fake: FakeProvider, tmp_path: Path) -> AsyncIterator[SidecarApp]:
    """Every test model enabled against the fake provider."""
    catalog = write_catalog(tmp_path / "catalog.yaml", all_live(fake.base_url))
    async with http_sidecar(checkpoint, catalog) as app:
        yield app
