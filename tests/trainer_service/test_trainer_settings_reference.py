"""docs/trainer-configuration.md is generated from trainer/service/settings.py and is up to date."""

from __future__ import annotations

import dataclasses
import re

from trainer.service import settings_reference
from trainer.service.settings import TrainerSettings


def test_the_page_is_up_to_date() -> None:
    assert settings_reference.main(["--check"]) == 0, "run: python -m trainer.service.settings_reference"


def test_every_key_is_on_the_page_with_its_default_and_a_meaning() -> None:
    rows = {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(
            r"^\| `([a-z0-9_]+\.[a-z0-9_]+)` \| ([^|]+) \| (.*) \|$", settings_reference.render(), re.M
        )
    }
    defaults = TrainerSettings()
    for section in dataclasses.fields(defaults):
        for item in dataclasses.fields(getattr(defaults, section.name)):
            key = f"{section.name}.{item.name}"
            assert key in rows, key
            shown, meaning = rows[key]
            assert meaning.strip(), f"{key} has no comment above it in trainer/service/settings.py"
            value = getattr(getattr(defaults, section.name), item.name)
            if value is not None and not isinstance(value, tuple | bool):
                assert f"`{value}`" in shown, (key, shown)
