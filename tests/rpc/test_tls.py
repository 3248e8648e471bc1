"""TLS and mTLS on a real grpc.aio server (health service) on 127.0.0.1:0, with certificates made here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from barp_sidecar.errors import ConfigError
from barp_sidecar.rpc.tls import (
    ClientTLSFiles,
    ServerTLSFiles,
    bind_port,
    channel_credentials,
    client_files_from,
    open_channel,
    server_credentials,
    server_files_from,
)
from barp_sidecar.settings import load_settings
from tests.tls_certs import Pki, make_pki

CALL_TIMEOUT_S = 5.0


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def rogue(tmp_path: Path) -> Pki:
    """A second, unrelated CA with its own server and client certificates."""
    return make_pki(tmp_path / "rogue", prefix="rogue-")


@asynccontextmanager
async def health_server(files: ServerTLSFiles) -> AsyncIterator[int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = bind_port(server, "127.0.0.1", 0, server_credentials(files))
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


async def check_health(port: int, files: ClientTLSFiles | None) -> int:
    credentials = channel_credentials(files) if files is not None else None
    async with open_channel(f"localhost:{port}", credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S)
        return int(response.status)


def tls_only(pki: Pki) -> ServerTLSFiles:
    return ServerTLSFiles(cert_file=str(pki.server_cert), key_file=str(pki.server_key))


def mutual(pki: Pki) -> ServerTLSFiles:
    return ServerTLSFiles(
        cert_file=str(pki.server_cert), key_file=str(pki.server_key), client_ca_file=str(pki.ca_cert)
    )


async def test_plaintext_when_no_files_are_set() -> None:
    assert server_credentials(ServerTLSFiles()) is None
    assert channel_credentials(ClientTLSFiles()) is None
    async with health_server(ServerTLSFiles()) as port:
        assert await check_health(port, None) == health_pb2.HealthCheckResponse.SERVING


async def test_tls_health_with_the_right_ca(pki: Pki) -> None:
    async with health_server(tls_only(pki)) as port:
        status = await check_health(port, ClientTLSFiles(ca_file=str(pki.ca_cert)))
    assert status == health_pb2.HealthCheckResponse.SERVING


async def test_tls_server_refuses_a_plaintext_client(pki: Pki) -> None:
    async with health_server(tls_only(pki)) as port:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await check_health(port, None)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_tls_client_refuses_a_server_signed_by_another_ca(pki: Pki, rogue: Pki) -> None:
    async with health_server(tls_only(rogue)) as port:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await check_health(port, ClientTLSFiles(ca_file=str(pki.ca_cert)))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_accepts_a_client_certificate_from_the_ca(pki: Pki) -> None:
    client = ClientTLSFiles(
        ca_file=str(pki.ca_cert), cert_file=str(pki.client_cert), key_file=str(pki.client_key)
    )
    async with health_server(mutual(pki)) as port:
        assert await check_health(port, client) == health_pb2.HealthCheckResponse.SERVING


async def test_mtls_rejects_a_client_without_a_certificate(pki: Pki) -> None:
    async with health_server(mutual(pki)) as port:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await check_health(port, ClientTLSFiles(ca_file=str(pki.ca_cert)))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_rejects_a_client_certificate_from_another_ca(pki: Pki, rogue: Pki) -> None:
    client = ClientTLSFiles(
        ca_file=str(pki.ca_cert), cert_file=str(rogue.client_cert), key_file=str(rogue.client_key)
    )
    async with health_server(mutual(pki)) as port:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await check_health(port, client)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_files_come_from_the_sidecar_settings_sections(pki: Pki) -> None:
    settings = load_settings(
        None,
        {
            "BARP__SERVER__TLS_CERT_FILE": str(pki.server_cert),
            "BARP__SERVER__TLS_KEY_FILE": str(pki.server_key),
            "BARP__SERVER__TLS_CLIENT_CA_FILE": str(pki.ca_cert),
            "BARP__TRAINER__TLS_CA_FILE": str(pki.ca_cert),
            "BARP__TRAINER__TLS_CERT_FILE": str(pki.client_cert),
            "BARP__TRAINER__TLS_KEY_FILE": str(pki.client_key),
        },
    )
    server = server_files_from(settings.server, "server")
    client = client_files_from(settings.trainer, "trainer")
    assert server == mutual(pki) and server.enabled and server.mutual
    assert client.enabled and client.cert_file == str(pki.client_cert)
    assert isinstance(server_credentials(server), grpc.ServerCredentials)
    assert isinstance(channel_credentials(client), grpc.ChannelCredentials)


# --- bad files: a ConfigError naming the exact key, before any port binds -------------------------


def test_missing_server_cert_names_the_key(pki: Pki, tmp_path: Path) -> None:
    files = ServerTLSFiles(cert_file=str(tmp_path / "absent.pem"), key_file=str(pki.server_key))
    with pytest.raises(ConfigError) as caught:
        server_credentials(files)
    assert caught.value.key == "server.tls_cert_file"
    assert "absent.pem" in str(caught.value)


def test_missing_client_ca_names_the_key_with_its_section(pki: Pki, tmp_path: Path) -> None:
    files = ServerTLSFiles(
        cert_file=str(pki.server_cert),
        key_file=str(pki.server_key),
        client_ca_file=str(tmp_path / "nope.pem"),
        section="service",
    )
    with pytest.raises(ConfigError) as caught:
        server_credentials(files)
    assert caught.value.key == "service.tls_client_ca_file"


def test_unreadable_key_names_the_key(pki: Pki) -> None:
    # A path through a regular file fails with NotADirectoryError (an OSError that is not "missing"):
    # the unreadable case, also for root (who can read a file whatever its mode).
    files = ServerTLSFiles(cert_file=str(pki.server_cert), key_file=str(pki.server_key / "key.pem"))
    with pytest.raises(ConfigError) as caught:
        server_credentials(files)
    assert caught.value.key == "server.tls_key_file"
    assert "cannot read" in str(caught.value)


def test_directory_instead_of_file_names_the_key(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        channel_credentials(ClientTLSFiles(ca_file=str(tmp_path)))
    assert caught.value.key == "trainer.tls_ca_file"
    assert "directory" in str(caught.value)


def test_non_pem_file_names_the_key(pki: Pki, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"\x00\x01 not a certificate")
    with pytest.raises(ConfigError) as caught:
        server_credentials(ServerTLSFiles(cert_file=str(garbage), key_file=str(pki.server_key)))
    assert caught.value.key == "server.tls_cert_file"
    assert "not a PEM file" in str(caught.value)


def test_key_that_does_not_match_the_certificate(pki: Pki, rogue: Pki) -> None:
    with pytest.raises(ConfigError) as caught:
        server_credentials(ServerTLSFiles(cert_file=str(pki.server_cert), key_file=str(rogue.server_key)))
    assert caught.value.key == "server.tls_key_file"
    assert "does not match" in str(caught.value)


def test_client_key_that_does_not_match_names_the_client_section(pki: Pki, rogue: Pki) -> None:
    files = ClientTLSFiles(cert_file=str(pki.client_cert), key_file=str(rogue.client_key), section="trainer")
    with pytest.raises(ConfigError) as caught:
        channel_credentials(files)
    assert caught.value.key == "trainer.tls_key_file"


def test_ca_bundle_without_a_certificate(pki: Pki, tmp_path: Path) -> None:
    not_a_ca = tmp_path / "key-as-ca.pem"
    not_a_ca.write_bytes(pki.server_key.read_bytes())
    with pytest.raises(ConfigError) as caught:
        server_credentials(
            ServerTLSFiles(
                cert_file=str(pki.server_cert), key_file=str(pki.server_key), client_ca_file=str(not_a_ca)
            )
        )
    assert caught.value.key == "server.tls_client_ca_file"


def test_cert_without_key_and_mtls_without_cert_are_rejected(pki: Pki) -> None:
    with pytest.raises(ConfigError) as caught:
        server_credentials(ServerTLSFiles(cert_file=str(pki.server_cert)))
    assert caught.value.key == "server.tls_key_file"
    with pytest.raises(ConfigError) as caught:
        server_credentials(ServerTLSFiles(client_ca_file=str(pki.ca_cert)))
    assert caught.value.key == "server.tls_client_ca_file"
    with pytest.raises(ConfigError) as caught:
        channel_credentials(ClientTLSFiles(cert_file=str(pki.client_cert)))
    assert caught.value.key == "trainer.tls_key_file"


async def test_bind_failure_is_an_os_error_naming_the_address() -> None:
    server = grpc.aio.server()
    with pytest.raises(OSError, match=r"nonexistent\.invalid"):
        bind_port(server, "nonexistent.invalid", 0, None)
