"""Helpers for OpenAI-compatible HTTP API tests: a sidecar with the HTTP API on, its base URL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from barp_sidecar.app import SidecarApp
from tests.support.providers import FAST_RETRIES, sidecar
from tests.support.sidecar import sidecar_settings


@contextlib.asynccontextmanager
async def http_sidecar(
    checkpoint: Path, catalog: str, *, http: dict[str, Any] | None = None, **sections: dict[str, Any]
) -> AsyncIterator[SidecarApp]:
    """A started in-process sidecar with the HTTP API on 127.0.0.1, a free port."""
    settings = sidecar_settings(
        checkpoint,
        providers={"catalog_file": catalog, **FAST_RETRIES},
        http={"enabled": True, "port": 0, **(http or {})},
        **sections,
    )
    async with sidecar(settings) as app:
        yield app


def base_url(app: SidecarApp) -> str:
    return f"http://127.0.0.1:{app.http_port}/v1"
