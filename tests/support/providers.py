"""Helpers for Complete tests: catalogs for the tiny test policy pointing at a fake provider, a sidecar."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from barp_sidecar.app import SidecarApp
from barp_sidecar.settings import Settings
from tests.support.sidecar import ARMS, sidecar_settings

# Millisecond retries so fault tests stay fast.
FAST_RETRIES = {"retry_initial_backoff_ms": 1.0, "retry_max_backoff_ms": 5.0}


def write_catalog(path: Path, urls: Mapping[str, str | None], **fields: Any) -> str:
    """A catalog for the test policy's ARMS: model -> base_url (None or absent = disabled)."""
    entries = []
    for model in ARMS:
        url = urls.get(model)
        entry: dict[str, Any] = {"arm": model, "enabled": url is not None}
        if url is not None:
            entry.update(base_url=url, upstream_model=f"up-{model}", input_usd_per_1m_tokens=1.0)
            entry.update(output_usd_per_1m_tokens=2.0, max_concurrency=8, timeout_s=10.0, **fields)
        entries.append(entry)
    path.write_text(yaml.safe_dump({"providers": entries}))
    return str(path)


def all_live(url: str) -> dict[str, str | None]:
    return {model: url for model in ARMS}


def settings_for(checkpoint: Path, catalog: str | None, **providers: Any) -> Settings:
    return sidecar_settings(checkpoint, providers={"catalog_file": catalog, **FAST_RETRIES, **providers})


@contextlib.asynccontextmanager
async def sidecar(settings: Settings, env: Mapping[str, str] | None = None) -> AsyncIterator[SidecarApp]:
    """An in-process sidecar whose provider keys come from ``env`` (empty by default), not os.environ."""
    app = SidecarApp.build(settings, env=env or {})
    await app.start()
    try:
        yield app
    finally:
        await app.close()
