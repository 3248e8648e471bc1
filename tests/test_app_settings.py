"""serve's settings layering (file <- env <- flags) and the exit code for bad configuration."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from barp_sidecar import app
from barp_sidecar.errors import ConfigError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    app.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_override_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("server: {port: 6000}\nmetrics: {port: 6001}\nbatching: {max_wait_ms: 3}\n")
    settings = app.settings_from_args(
        parse("--config", str(config), "--port", "0", "--admin-port", "0"),
        {"BARP__BATCHING__MAX_WAIT_MS": "1.5"},
    )
    assert settings.server.port == 0 and settings.metrics.port == 6001 and settings.admin.port == 0
    assert settings.batching.max_wait_ms == 1.5


@pytest.mark.parametrize(
    ("argv", "env", "key"),
    [
        (("--port", "70000"), {}, "server.port"),
        (("--metrics-port", "-1"), {}, "metrics.port"),
        (("--admin-port", "65536"), {}, "admin.port"),
        ((), {"BARP__BATCHING__MAX_BATCH_SIZE": "zero"}, "batching.max_batch_size"),
        ((), {"BARP__BATCHING__MAX_PENDING": "0"}, "batching.max_pending"),
        ((), {"BARP__ROUTING__DEFAULT_EXPLORATION": "explore"}, "routing.default_exploration"),
        ((), {"BARP__BATCHING__NOPE": "1"}, "batching.nope"),
    ],
)
def test_bad_settings_name_the_key(argv, env, key) -> None:
    with pytest.raises(ConfigError) as caught:
        app.settings_from_args(parse(*argv), env)
    assert caught.value.key == key


def test_run_returns_2_and_prints_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert app.run(parse("--config", "/nonexistent/sidecar.yaml")) == app.EXIT_CONFIG
    assert "invalid configuration: --config: no such file" in capsys.readouterr().err


def test_unknown_disabled_model_is_a_config_error(tmp_path: Path) -> None:
    from tests.support.sidecar import make_tiny_checkpoint, sidecar_settings

    settings = sidecar_settings(
        make_tiny_checkpoint(tmp_path / "v1"), routing={"disabled_models": "gpt-9, small-model"}
    )
    with pytest.raises(ConfigError) as caught:
        app.SidecarApp.build(settings)
    assert caught.value.key == "routing.disabled_models" and "gpt-9" in str(caught.value)
