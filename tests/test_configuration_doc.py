"""docs/configuration.md documents every setting with its real default (keeps the doc from going stale)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from barp_sidecar.settings import Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def all_settings() -> list[tuple[str, object]]:
    defaults = Settings()
    return [
        (f"{section.name}.{item.name}", getattr(getattr(defaults, section.name), item.name))
        for section in dataclasses.fields(defaults)
        for item in dataclasses.fields(getattr(defaults, section.name))
    ]


@pytest.mark.parametrize(("key", "default"), all_settings())
def test_every_setting_is_documented_with_its_default(key: str, default: object) -> None:
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `([a-z0-9_]+\.[a-z0-9_]+)` \| ([^|]+) \|", DOC.read_text(), re.M)
    }
    assert key in rows, f"{key} is missing from docs/configuration.md"
    shown = rows[key]
    if default is None:
        assert "none" in shown
    elif isinstance(default, bool):
        assert f"`{str(default).lower()}`" in shown
    elif isinstance(default, tuple):
        assert f"`{list(default)}`" in shown, (key, shown)
    elif isinstance(default, str):
        assert f"`{default}`" in shown or (default == "" and '`""`' in shown)
    else:
        assert f"`{default}`" in shown, (key, shown)
