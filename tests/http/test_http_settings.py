"""The ``http`` settings section: validation before anything binds, and a port that cannot be bound."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from barp_sidecar.app import SidecarApp
from barp_sidecar.errors import ConfigError
from barp_sidecar.http.server import key_digest
from barp_sidecar.settings import load_settings
from tests.support.providers import all_live, write_catalog
from tests.support.sidecar import make_tiny_checkpoint, sidecar_settings


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("PORT", "70000", "[0, 65535]"),
        ("ROUTED_MODEL", '" "', "must not be empty"),
        ("API_KEY_SHA256", "abc", "SHA-256"),
        ("MAX_BODY_BYTES", "10", ">= 1024"),
        ("ENABLED", "maybe", "true or false"),
    ],
)
def test_bad_http_settings_name_the_key(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {f"BARP__HTTP__{key}": value})
    assert caught.value.key == f"http.{key.lower()}" and message in str(caught.value)


def test_key_digests_are_read_case_insensitively() -> None:
    digest = key_digest("k1")
    settings = load_settings(None, {"BARP__HTTP__API_KEY_SHA256": f" {digest.upper()} , {key_digest('k2')}"})
    assert settings.http.api_key_digests() == {digest, key_digest("k2")}


async def test_a_taken_http_port_stops_startup_naming_it(tmp_path: Path) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "v1")
    catalog = write_catalog(tmp_path / "c.yaml", all_live("http://127.0.0.1:9/v1"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = sidecar_settings(
            checkpoint, providers={"catalog_file": catalog}, http={"enabled": True, "port": port}
        )
        app = SidecarApp.build(settings, env={})
        with pytest.raises(ConfigError) as caught:
            await app.start()
    assert caught.value.key == "http.port"
    assert app.http_port is None
