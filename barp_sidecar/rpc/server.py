"""The grpc.aio server of the sidecar: Router + standard health + reflection, bound from ServerSettings.

Owns server options, binding (insecure or TLS/mTLS) and the health status. Servicers are built elsewhere and
passed in.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from barp_sidecar.errors import ConfigError
from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.settings import ServerSettings

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name


def _read(key: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from exc


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS (and mTLS with a client CA) credentials, or None for plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    key = _read("server.tls_key_file", settings.tls_key_file)
    cert = _read("server.tls_cert_file", settings.tls_cert_file)
    client_ca = (
        _read("server.tls_client_ca_file", settings.tls_client_ca_file)
        if settings.tls_client_ca_file
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


class GrpcServer:
    """Owns the grpc.aio server; built in ``start`` (grpc.aio needs the running loop), which binds and
    returns the port. TLS files are read at construction so a bad path fails before anything binds."""

    def __init__(self, settings: ServerSettings, router: router_pb2_grpc.RouterServicer) -> None:
        self._settings = settings
        self._router = router
        self._credentials = server_credentials(settings)
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self.port: int | None = None

    async def start(self) -> int:
        settings = self._settings
        self._health = health.aio.HealthServicer()
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                # Two sidecars must never silently share one port.
                ("grpc.so_reuseport", 0),
            ]
        )
        router_pb2_grpc.add_RouterServicer_to_server(self._router, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (ROUTER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"{settings.host}:{settings.port}"
        try:
            if self._credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, self._credentials)
        except RuntimeError as exc:
            raise ConfigError("server.port", f"cannot bind {address} ({exc})") from exc
        self._server = server
        await server.start()
        self.port = port
        return port

    async def set_serving(self) -> None:
        assert self._health is not None
        for service in ("", ROUTER_SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def set_not_serving(self) -> None:
        """NOT_SERVING for every service, and ignore later changes (graceful shutdown)."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        """Stop accepting RPCs; in-flight ones get ``grace_s`` seconds, then are cancelled."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
