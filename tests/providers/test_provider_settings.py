from __future__ import annotations

import pytest

from barp_sidecar.errors import ConfigError
from barp_sidecar.settings import load_settings


def test_provider_settings_defaults_and_env_overrides() -> None:
    settings = load_settings(
        None, {"BARP__PROVIDERS__MAX_FALLBACKS": "0", "BARP__PROVIDERS__MAX_ATTEMPTS": "5"}
    )
    assert settings.providers.max_fallbacks == 0 and settings.providers.max_attempts == 5
    assert settings.providers.catalog_file is None and settings.providers.routing_text == "last_user"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_attempts", "0"),
        ("max_attempts", "11"),
        ("retry_initial_backoff_ms", "-1"),
        ("retry_max_backoff_ms", "50"),  # below the default initial backoff (100 ms)
        ("retry_after_max_s", "-1"),
        ("breaker_failure_threshold", "-1"),
        ("breaker_open_s", "0"),
        ("max_fallbacks", "-1"),
        ("connect_timeout_s", "0"),
        ("max_queued_per_provider", "-1"),
        ("routing_text_max_bytes", "10"),
        ("routing_text", "first_user"),
    ],
)
def test_bad_provider_settings_name_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {f"BARP__PROVIDERS__{key.upper()}": value})
    assert caught.value.key == f"providers.{key}"
