"""Settings: defaults, YAML + environment layering, and every validation error naming its key."""

from __future__ import annotations

import dataclasses

import pytest

from barp_sidecar.domain import ExplorationMode
from barp_sidecar.errors import ConfigError
from barp_sidecar.settings import (
    BatchingSettings,
    ExpiryAction,
    LogLevel,
    ServerSettings,
    Settings,
    env_overrides,
    load_settings,
    resolve_state_dirs,
)


def test_defaults_need_no_file_and_are_valid() -> None:
    settings = load_settings(None, {"HOME": "/home/newcomer"})
    assert settings == resolve_state_dirs(Settings(), {"HOME": "/home/newcomer"})
    assert settings.server.host == "127.0.0.1"
    assert settings.admin.host == "127.0.0.1"
    assert settings.logging.log_prompts is False


@pytest.mark.parametrize(
    ("env", "state_dir"),
    [
        ({"HOME": "/home/u"}, "/home/u/.local/state/barp-sidecar"),
        ({"HOME": "/home/u", "XDG_STATE_HOME": "/xdg"}, "/xdg/barp-sidecar"),
        ({"HOME": "/home/u", "XDG_STATE_HOME": "relative"}, "/home/u/.local/state/barp-sidecar"),
        ({"HOME": "/home/u", "BARP__STATE__DIR": "/srv/barp"}, "/srv/barp"),
    ],
)
def test_durable_state_goes_under_the_state_dir_never_the_working_directory(
    env: dict[str, str], state_dir: str
) -> None:
    settings = load_settings(None, env)
    assert settings.state.dir == state_dir
    assert settings.rewards.spool_dir == f"{state_dir}/spool"
    assert settings.trainer.checkpoint_cache_dir == f"{state_dir}/policies"


def test_explicit_spool_and_policy_dirs_win_over_the_state_dir() -> None:
    env = {"HOME": "/h", "BARP__REWARDS__SPOOL_DIR": "/s", "BARP__TRAINER__CHECKPOINT_CACHE_DIR": "/p"}
    settings = load_settings(None, env)
    assert (settings.rewards.spool_dir, settings.trainer.checkpoint_cache_dir) == ("/s", "/p")


def test_file_then_env_layering(tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("server:\n  port: 6000\nbatching:\n  max_wait_ms: 3\n  max_batch_size: 8\n")
    settings = load_settings(config, {"BARP__BATCHING__MAX_WAIT_MS": "1.5", "UNRELATED": "x"})
    assert settings.server.port == 6000
    assert settings.batching.max_wait_ms == 1.5  # env wins over the file
    assert settings.batching.max_batch_size == 8
    assert isinstance(settings.batching.max_wait_ms, float)


def test_env_override_parses_yaml_scalars_and_null() -> None:
    nested = env_overrides({"BARP__LOGGING__LOG_PROMPTS": "true", "BARP__TRAINER__TARGET": ""})
    assert nested == {"logging": {"log_prompts": True}, "trainer": {"target": None}}


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"BARP__SERVER__PORT": "abc"}, "server.port"),
        ({"BARP__SERVER__PORT": "70000"}, "server.port"),
        ({"BARP__SERVER__NOPE": "1"}, "server.nope"),
        ({"BARP__NOSECTION__X": "1"}, "nosection"),
        ({"BARP__BATCHING__MAX_WAIT_MS": "-1"}, "batching.max_wait_ms"),
        ({"BARP__BATCHING__MAX_WAIT_MS": ".nan"}, "batching.max_wait_ms"),
        ({"BARP__BATCHING__MAX_BATCH_SIZE": "0"}, "batching.max_batch_size"),
        ({"BARP__BATCHING__MAX_BATCH_SIZE": "true"}, "batching.max_batch_size"),
        ({"BARP__ROUTING__DEFAULT_QUALITY_WEIGHT": "1.5"}, "routing.default_quality_weight"),
        ({"BARP__ROUTING__DEFAULT_EXPLORATION": "random"}, "routing.default_exploration"),
        ({"BARP__SERVER__TLS_CERT_FILE": "/c.pem"}, "server.tls_key_file"),
        ({"BARP__SERVER__TLS_CLIENT_CA_FILE": "/ca.pem"}, "server.tls_client_ca_file"),
        ({"BARP__REWARDS__EXPIRY_ACTION": "keep"}, "rewards.expiry_action"),
        ({"BARP__REWARDS__SPOOL_MAX_BYTES_WITHOUT_TRAINER": "10"}, "rewards.spool_max_bytes_without_trainer"),
        ({"BARP__STATE__DIR": "''"}, "state.dir"),
        ({"BARP__LOGGING__LEVEL": "loud"}, "logging.level"),
        ({"BARP__ENCODER__BACKEND": "tensorrt"}, "encoder.backend"),
        ({"BARP__SERVER": "1"}, "BARP__SERVER"),
    ],
)
def test_invalid_values_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env)
    assert caught.value.key == key
    assert str(caught.value).startswith(key)


def test_bad_files_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "missing.yaml", {})
    broken = tmp_path / "broken.yaml"
    broken.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(broken, {})
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(scalar, {})
    wrong_section = tmp_path / "section.yaml"
    wrong_section.write_text("server: 5\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(wrong_section, {})
    assert caught.value.key == "server"


def test_enum_keys_are_typed_and_list_keys_take_a_list_or_a_comma_string(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "routing: {default_exploration: sample, disabled_models: [a, b]}\nlogging: {level: WARNING}\n"
    )
    settings = load_settings(path, {"BARP__REWARDS__EXPIRY_ACTION": "default_quality"})
    assert settings.routing.default_exploration is ExplorationMode.SAMPLE
    assert settings.routing.disabled_models == ("a", "b")
    assert settings.logging.level is LogLevel.WARNING
    assert settings.rewards.expiry_action is ExpiryAction.DEFAULT_QUALITY
    from_env = load_settings(None, {"BARP__ROUTING__DISABLED_MODELS": "a, b,,"})
    assert from_env.routing.disabled_models == ("a", "b")
    with pytest.raises(
        ConfigError, match=r"routing\.default_exploration: must be one of \['greedy', 'sample'"
    ):
        load_settings(None, {"BARP__ROUTING__DEFAULT_EXPLORATION": "random"})
    with pytest.raises(ConfigError, match=r"routing\.disabled_models\[1\]: must be a string"):
        load_settings(None, {"BARP__ROUTING__DISABLED_MODELS": "[a, 3]"})


def test_every_section_checks_itself() -> None:
    """``validate`` is the sections' own checks: a bad value is caught by its section alone."""
    with pytest.raises(ConfigError, match=r"^batching\.max_wait_ms"):
        BatchingSettings(max_wait_ms=5000).check()
    with pytest.raises(ConfigError, match=r"^server\.health_port: must differ"):
        ServerSettings(port=7000, health_port=7000).check()
    for section in dataclasses.fields(Settings):
        getattr(Settings(), section.name).check()  # the defaults pass
