"""serve's settings layering (file <- env <- flags) and the exit code for bad configuration."""

from __future__ import annotations

import argparse
import subprocess
import sys
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
        ((), {"BARP__POLICY__CHECKPOINT_DIR": "/nonexistent/policies"}, "policy.checkpoint_dir"),
        ((), {"BARP__PROVIDERS__CATALOG_FILE": "/nonexistent/catalog.yaml"}, "providers.catalog_file"),
        ((), {"BARP__TRAINER__TLS_CA_FILE": "/nonexistent/ca.pem"}, "trainer.tls_ca_file"),
    ],
)
def test_bad_settings_name_the_key(argv, env, key) -> None:
    with pytest.raises(ConfigError) as caught:
        app.settings_from_args(parse(*argv), env)
    assert caught.value.key == key


def test_run_returns_2_and_prints_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert app.run(parse("--config", "/nonexistent/sidecar.yaml")) == app.EXIT_CONFIG
    assert "invalid configuration: --config: no such file" in capsys.readouterr().err


def test_a_bad_setting_is_reported_before_torch_is_imported(tmp_path: Path) -> None:
    """Validation (including the paths settings name) runs before the heavy imports (issue 10, start-up)."""
    code = (
        "import sys; from barp_sidecar.cli import main; "
        "code = main(['serve', '--config', sys.argv[1]]); "
        "print('torch' in sys.modules, code)"
    )
    config = tmp_path / "bad.yaml"
    config.write_text("policy: {checkpoint_dir: /nonexistent/policies}\n")
    result = subprocess.run(
        [sys.executable, "-c", code, str(config)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.split() == ["False", "2"], result.stderr
    assert result.stderr.strip().endswith("policy.checkpoint_dir: no such directory: /nonexistent/policies")


def test_unknown_disabled_model_is_a_config_error(tmp_path: Path) -> None:
    from tests.support.sidecar import make_tiny_checkpoint, sidecar_settings

    settings = sidecar_settings(
        make_tiny_checkpoint(tmp_path / "v1"), routing={"disabled_models": "gpt-9, small-model"}
    )
    with pytest.raises(ConfigError) as caught:
        app.SidecarApp.build(settings)
    assert caught.value.key == "routing.disabled_models" and "gpt-9" in str(caught.value)
