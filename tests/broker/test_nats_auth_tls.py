"""Authentication and TLS against a real ``nats-server``: a token, an NKey seed, mutual TLS with a test CA
(each delivering events end to end), wrong ones shown as ``auth_failed`` / ``unreachable``, and the
settings checks that stop a process before it binds (exit 2 naming the key, tested here at the
``connection_options`` level that the composition roots call)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import nkeys
import pytest

from barp_sidecar.broker.nats_connection import connection_options
from barp_sidecar.errors import ConfigError
from tests.broker.test_nats_event_transport import Pipeline, append, events_settings
from tests.support.nats_server import NatsServer, require_nats_server
from tests.support.waiting import wait_until
from tests.tls_certs import make_pki


async def delivers(tmp_path: Path, settings, env: dict[str, str]) -> None:
    pipeline = await Pipeline(tmp_path, settings, env).start()
    try:
        ids = await append(pipeline.spool, random.Random(7), 20)
        await wait_until(lambda: sorted(pipeline.stored_ids()) == sorted(ids), what="delivery")
    finally:
        await pipeline.close()


async def test_token_authentication(tmp_path):
    require_nats_server()
    node = NatsServer(tmp_path / "store", extra_args=["--auth", "t0ken-s3cret"]).start()
    try:
        settings = events_settings([node.url], nats_token_env="BARP_TEST_NATS_TOKEN")
        await delivers(tmp_path / "right", settings, {"BARP_TEST_NATS_TOKEN": "t0ken-s3cret"})
        wrong = await Pipeline(tmp_path / "wrong", settings, {"BARP_TEST_NATS_TOKEN": "nope"}).start()
        try:
            await wait_until(lambda: wrong.publisher.state == "auth_failed", what="auth_failed")
        finally:
            await wrong.close()
    finally:
        node.stop()


async def test_nkey_seed_authentication(tmp_path):
    require_nats_server()
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    config = tmp_path / "auth.conf"
    config.write_text(f"authorization {{\n  users = [ {{ nkey: {public} }} ]\n}}\n")
    node = NatsServer(tmp_path / "store", extra_args=["-c", str(config)]).start()
    try:
        seed_file = tmp_path / "user.nk"
        seed_file.write_bytes(seed + b"\n")
        await delivers(tmp_path / "nkey", events_settings([node.url], nats_nkey_seed_file=str(seed_file)), {})
    finally:
        node.stop()


async def test_mutual_tls_with_a_private_ca(tmp_path):
    require_nats_server()
    pki = make_pki(tmp_path / "pki")
    node = NatsServer(
        tmp_path / "store",
        extra_args=[
            "--tlsverify",
            "--tlscert",
            str(pki.server_cert),
            "--tlskey",
            str(pki.server_key),
            "--tlscacert",
            str(pki.ca_cert),
        ],
    ).start()
    try:
        settings = events_settings(
            [node.url],
            nats_tls_ca_file=str(pki.ca_cert),
            nats_tls_cert_file=str(pki.client_cert),
            nats_tls_key_file=str(pki.client_key),
        )
        await delivers(tmp_path / "mtls", settings, {})
        # Without the client certificate the server refuses the connection.
        no_cert = events_settings([node.url], nats_tls_ca_file=str(pki.ca_cert))
        pipeline = await Pipeline(tmp_path / "no-cert", no_cert, {}).start()
        try:
            await wait_until(lambda: pipeline.publisher.connect_failures >= 2, what="refused")
            assert not pipeline.publisher.connected
        finally:
            await pipeline.close()
    finally:
        node.stop()


@pytest.mark.parametrize(
    ("extra", "env", "key"),
    [
        ({"nats_token_env": "BARP_TEST_UNSET"}, {}, "events.nats_token_env"),
        ({"nats_user": "u", "nats_password_env": "BARP_TEST_UNSET"}, {}, "events.nats_password_env"),
        ({"nats_nkey_seed_file": "/nonexistent/user.nk"}, {}, "events.nats_nkey_seed_file"),
        ({"nats_nkey_seed_file": "NOT_A_SEED"}, {}, "events.nats_nkey_seed_file"),
        ({"nats_creds_file": "NOT_CREDS"}, {}, "events.nats_creds_file"),
        ({"nats_tls_ca_file": "/nonexistent/ca.crt"}, {}, "events.nats_tls_ca_file"),
        ({"nats_tls_ca_file": "NOT_PEM"}, {}, "events.nats_tls_ca_file"),
    ],
)
def test_bad_credentials_and_tls_files_are_config_errors_naming_the_key(tmp_path, extra, env, key):
    junk = tmp_path / "junk.txt"
    junk.write_text("this is not a key, a creds file or a certificate\n")
    values = {k: (str(junk) if v in ("NOT_A_SEED", "NOT_CREDS", "NOT_PEM") else v) for k, v in extra.items()}
    with pytest.raises(ConfigError) as error:
        connection_options(events_settings(["nats://127.0.0.1:4222"], **values), env)
    assert error.value.key == key


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"nats_urls": ("http://127.0.0.1:4222",)}, "events.nats_urls[0]"),
        ({"nats_urls": ()}, "events.nats_urls"),
        ({"nats_token_env": "T", "nats_creds_file": "/x"}, "events.nats_creds_file"),
        ({"nats_user": "u"}, "events.nats_password_env"),
        ({"nats_tls_cert_file": "/c"}, "events.nats_tls_key_file"),
        ({"stream": "bad name"}, "events.stream"),
        ({"subject": "barp.*"}, "events.subject"),
        ({"dead_letter_subject": "barp.events.reward"}, "events.dead_letter_subject"),
        ({"stream_replicas": 7}, "events.stream_replicas"),
        ({"duplicate_window_s": 0.0}, "events.duplicate_window_s"),
        ({"reconnect_max_backoff_s": 0.01}, "events.reconnect_max_backoff_s"),
    ],
)
def test_settings_checks_name_the_key(extra, key):
    values = dict(extra)
    urls = list(values.pop("nats_urls", ("nats://127.0.0.1:4222",)))
    settings = events_settings(urls, **values)
    with pytest.raises(ConfigError) as error:
        settings.check()
    assert error.value.key == key
