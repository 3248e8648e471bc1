from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from barp_sidecar.errors import ConfigError
from barp_sidecar.providers.catalog import (
    ApiKey,
    catalog_for_policy,
    load_catalog,
    parse_catalog,
    shipped_catalog_path,
)

ROUTERBENCH_ARMS = (
    "WizardLM/WizardLM-13B-V1.2",
    "claude-instant-v1",
    "claude-v1",
    "claude-v2",
    "gpt-3.5-turbo-1106",
    "gpt-4-1106-preview",
    "meta/code-llama-instruct-34b-chat",
    "meta/llama-2-70b-chat",
    "mistralai/mistral-7b-chat",
    "mistralai/mixtral-8x7b-chat",
    "zero-one-ai/Yi-34B-Chat",
)
KNOWN_PRICES = {
    "gpt-4-1106-preview": (10.0, 30.0),
    "claude-v2": (8.0, 24.0),
    "gpt-3.5-turbo-1106": (1.0, 2.0),
    "meta/llama-2-70b-chat": (0.9, 0.9),
    "mistralai/mixtral-8x7b-chat": (0.6, 0.6),
}


def entry(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "arm": "a",
        "enabled": True,
        "base_url": "http://127.0.0.1:9/v1",
        "upstream_model": "m",
        "api_key_env": "KEY",
    }
    data.update(overrides)
    return data


def test_shipped_catalog_covers_the_routerbench_arms_in_order_all_disabled() -> None:
    catalog = load_catalog(None)
    assert catalog.models == ROUTERBENCH_ARMS
    assert catalog.enabled_models() == ()
    catalog.check_models(ROUTERBENCH_ARMS)
    for model, (price_in, price_out) in KNOWN_PRICES.items():
        e = catalog.entry(model)
        assert (e.input_usd_per_1m_tokens, e.output_usd_per_1m_tokens) == (price_in, price_out)
    assert {catalog.entry(a).api_style for a in ("claude-v1", "claude-v2", "claude-instant-v1")} == {
        "anthropic"
    }
    assert shipped_catalog_path().name == "catalog.routerbench.yaml"


def test_a_catalog_arm_mismatch_names_the_arms() -> None:
    catalog = load_catalog(None)
    models = (*ROUTERBENCH_ARMS[:-1], "new-model")
    with pytest.raises(ConfigError) as caught:
        catalog.check_models(models)
    message = str(caught.value)
    assert caught.value.key == "providers.catalog_file"
    assert "'new-model'" in message and "Yi-34B" not in message  # an extra entry is fine (a pool change)
    assert catalog.missing(models) == ["new-model"]


def test_a_full_entry_parses_with_units() -> None:
    catalog = parse_catalog(
        {
            "providers": [
                entry(
                    api_style="anthropic",
                    base_url="https://api.example.com/v1/",
                    input_usd_per_1m_tokens=3,
                    output_usd_per_1m_tokens=15.5,
                    max_concurrency=4,
                    timeout_s=2.5,
                    default_max_tokens=99,
                )
            ]
        }
    )
    e = catalog.entry("a")
    assert e.base_url == "https://api.example.com/v1"  # trailing slash dropped
    assert (e.input_usd_per_1m_tokens, e.output_usd_per_1m_tokens) == (3.0, 15.5)
    assert (e.max_concurrency, e.timeout_s, e.default_max_tokens, e.api_style) == (4, 2.5, 99, "anthropic")


def test_a_disabled_entry_needs_no_endpoint() -> None:
    catalog = parse_catalog({"providers": [{"arm": "a", "enabled": False}]})
    assert catalog.enabled_models() == ()


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ([], "catalog"),
        ({"providers": []}, "catalog.providers"),
        ({"providers": [entry()], "extra": 1}, "catalog.extra"),
        ({"version": 2, "providers": [entry()]}, "catalog.version"),
        ({"providers": ["x"]}, "providers[0]"),
        ({"providers": [entry(colour="red")]}, "providers[0].colour"),
        ({"providers": [entry(arm=None)]}, "providers[0].arm"),
        ({"providers": [entry(), entry()]}, "providers[1].arm"),
        ({"providers": [entry(enabled="yes")]}, "providers[0].enabled"),
        ({"providers": [entry(api_style="grpc")]}, "providers[0].api_style"),
        ({"providers": [entry(base_url=None)]}, "providers[0].base_url"),
        ({"providers": [entry(base_url="ftp://x")]}, "providers[0].base_url"),
        ({"providers": [entry(base_url="https://u:p@x/v1")]}, "providers[0].base_url"),
        ({"providers": [entry(upstream_model="")]}, "providers[0].upstream_model"),
        ({"providers": [entry(api_key_file="/k")]}, "providers[0].api_key_file"),
        ({"providers": [entry(input_usd_per_1m_tokens=-1)]}, "providers[0].input_usd_per_1m_tokens"),
        (
            {"providers": [entry(output_usd_per_1m_tokens=float("nan"))]},
            "providers[0].output_usd_per_1m_tokens",
        ),
        ({"providers": [entry(max_concurrency=0)]}, "providers[0].max_concurrency"),
        ({"providers": [entry(max_concurrency=2.5)]}, "providers[0].max_concurrency"),
        ({"providers": [entry(timeout_s=0)]}, "providers[0].timeout_s"),
    ],
)
def test_bad_catalogs_name_the_key(data: Any, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_catalog(data, "catalog.yaml")
    assert caught.value.key == key


def test_file_errors_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file") as caught:
        load_catalog(tmp_path / "missing.yaml")
    assert caught.value.key == "providers.catalog_file"
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_catalog(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"providers": [entry()]}))
    assert load_catalog(good).models == ("a",)


def test_keys_come_from_the_environment_and_are_redacted() -> None:
    e = parse_catalog({"providers": [entry(api_key_env="MY_KEY")]}).entry("a")
    key = e.read_api_key({"MY_KEY": " sk-live-123456789 \n"})
    assert isinstance(key, ApiKey)
    assert key.reveal() == "sk-live-123456789"
    assert "sk-live" not in repr(key) and "sk-live" not in str(key) and "sk-live" not in f"{key}"


def test_a_missing_key_names_the_variable_not_a_value() -> None:
    e = parse_catalog({"providers": [entry(api_key_env="MY_KEY")]}).entry("a")
    for env in ({}, {"MY_KEY": "  "}):
        with pytest.raises(ConfigError, match="MY_KEY is not set") as caught:
            e.read_api_key(env)
        assert caught.value.key == "catalog[a].api_key_env"


def test_keys_from_secret_files(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("sk-from-file\n")
    e = parse_catalog({"providers": [entry(api_key_env=None, api_key_file=str(secret))]}).entry("a")
    key = e.read_api_key({})
    assert key is not None and key.reveal() == "sk-from-file"
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        e.read_api_key({})
    secret.unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        e.read_api_key({})


def test_keyless_endpoints_have_no_key() -> None:
    e = parse_catalog({"providers": [entry(api_key_env=None)]}).entry("a")
    assert e.read_api_key({}) is None


def test_catalog_for_policy(tmp_path: Path) -> None:
    assert catalog_for_policy(None, ROUTERBENCH_ARMS).models == ROUTERBENCH_ARMS
    custom = catalog_for_policy(None, ("x", "y"))
    assert custom.models == ("x", "y") and custom.enabled_models() == ()
    file = tmp_path / "catalog.yaml"
    file.write_text(yaml.safe_dump({"providers": [entry(arm="x"), entry(arm="z")]}))
    assert catalog_for_policy(str(file), ("z", "x")).models == ("x", "z")
    with pytest.raises(ConfigError, match=r"missing from the catalog: \['y'\]"):
        catalog_for_policy(str(file), ("x", "y"))
    assert catalog_for_policy(str(file), ("x",)).models == ("x", "z")  # more entries than models: fine


def test_the_shipped_catalog_matches_the_shipped_policy() -> None:
    from barp_sidecar.policy.builtin import builtin_policy_dir
    from barp_sidecar.policy.checkpoint import read_manifest

    # A missing shipped policy is a packaging regression: this fails (read_manifest raises), never skips.
    models = read_manifest(builtin_policy_dir()).models
    assert load_catalog(None).models == models  # same names, same order
    assert catalog_for_policy(None, models).source.endswith("catalog.routerbench.yaml")


def test_the_demo_catalog_enables_every_routerbench_arm_on_the_local_fake() -> None:
    demo = load_catalog(shipped_catalog_path().with_name("catalog.fake-local.yaml"))
    assert demo.models == ROUTERBENCH_ARMS and demo.enabled_models() == ROUTERBENCH_ARMS
    shipped = load_catalog(None)
    for model in ROUTERBENCH_ARMS:
        entry, priced = demo.entry(model), shipped.entry(model)
        assert entry.base_url == "http://127.0.0.1:8089/v1" and entry.read_api_key({}) is None
        assert (entry.input_usd_per_1m_tokens, entry.output_usd_per_1m_tokens) == (
            priced.input_usd_per_1m_tokens,
            priced.output_usd_per_1m_tokens,
        )
