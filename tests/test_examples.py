"""Every shipped example configuration loads and validates (examples/*.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from barp_sidecar.settings import load_settings
from trainer.service.settings import load_trainer_settings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml"))


def test_examples_ship() -> None:
    assert {f.name for f in FILES} >= {"sidecar.yaml", "trainer.yaml", "trainer-quickstart.yaml"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    if path.name.startswith("sidecar"):
        settings = load_settings(path, {"HOME": "/home/newcomer"})
        assert settings.trainer.target == "127.0.0.1:50061"
        assert settings.providers.catalog_file is not None
        assert (EXAMPLES.parent / settings.providers.catalog_file).is_file()
    elif path.name.startswith("trainer"):
        trainer = load_trainer_settings(path, {})
        assert trainer.server.port == 50061
    else:
        raise AssertionError(f"{path.name}: name it sidecar*.yaml or trainer*.yaml so a test loads it")
