"""The gRPC server kit shared by both processes: the sidecar's Router and Admin ports and the trainer.

Owns one grpc.aio server: options (message limits, no ``SO_REUSEPORT``, core pending-call limits), the
services passed in, standard health and reflection, binding (insecure or TLS/mTLS, credentials from
``rpc.tls``), the error boundary (``rpc.boundary``, always the outermost interceptor, so every service
answers through the one status table and never UNKNOWN) and the optional plaintext health-only port for
Kubernetes probes (``rpc.health_port``). Servicers are built elsewhere and passed in; the process shell
(logging, signals, exit codes) is ``barp_sidecar.process``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from barp_sidecar.errors import ConfigError
from barp_sidecar.gen.barp.v1 import router_pb2
from barp_sidecar.rpc.boundary import ErrorBoundary
from barp_sidecar.rpc.health_port import HealthPort
from barp_sidecar.rpc.tls import bind_port, server_credentials, server_files_from

# Floor of gRPC core's queue of calls not yet handed to a handler (its default soft limit is 1000).
MIN_CORE_PENDING_REQUESTS = 16384
ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name


class ServerEndpoint(Protocol):
    """The settings a server binds from (the sidecar's ``server`` and the trainer's ``server`` sections)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def tls_cert_file(self) -> str | None: ...
    @property
    def tls_key_file(self) -> str | None: ...
    @property
    def tls_client_ca_file(self) -> str | None: ...
    @property
    def health_port(self) -> int | None: ...
    @property
    def health_host(self) -> str: ...


@dataclass(frozen=True)
class Service:
    """One generated service: its full name, the generated ``add_*Servicer_to_server`` and the servicer."""

    name: str
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any


@dataclass(frozen=True)
class PlainEndpoint:
    """A ``ServerEndpoint`` without TLS or probe port (the Admin port: loopback or bearer token)."""

    host: str
    port: int
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    health_port: int | None = None
    health_host: str = "0.0.0.0"


class GrpcServer:
    """Owns one grpc.aio server; built in ``start`` (grpc.aio needs the running loop), which binds and
    returns the port. TLS files are read and checked at construction so a bad file fails before anything
    binds. ``section`` names the settings section in errors (``server.port``, ``admin.port``)."""

    def __init__(
        self,
        endpoint: ServerEndpoint,
        services: Sequence[Service],
        *,
        section: str = "server",
        max_message_bytes: int = 4 << 20,
        max_pending_rpcs: int = 1024,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        health_and_reflection: bool = True,
    ) -> None:
        self._endpoint = endpoint
        self._services = tuple(services)
        self._section = section
        self._max_message_bytes = max_message_bytes
        self._max_pending_rpcs = max_pending_rpcs
        self._interceptors = (ErrorBoundary(), *interceptors)
        self._with_health = health_and_reflection
        self._credentials = server_credentials(server_files_from(endpoint, section))
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._health_port: HealthPort | None = None
        self.port: int | None = None
        self.health_port: int | None = None

    def add_service(self, service: Service) -> None:
        """Add a service whose servicer could only be built after construction; before ``start``."""
        if self._server is not None:
            raise RuntimeError("add_service after start")
        self._services = (*self._services, service)

    @property
    def tls(self) -> bool:
        return self._credentials is not None

    async def start(self) -> int:
        endpoint = self._endpoint
        pending_limit = max(MIN_CORE_PENDING_REQUESTS, 4 * self._max_pending_rpcs)
        server = grpc.aio.server(
            interceptors=self._interceptors,
            options=[
                ("grpc.max_receive_message_length", self._max_message_bytes),
                ("grpc.max_send_message_length", self._max_message_bytes),
                # Two processes must never silently share one port.
                ("grpc.so_reuseport", 0),
                # gRPC core randomly CANCELs calls not yet picked up by the app beyond 1000 (soft limit):
                # a burst must instead reach admission control and get a clear RESOURCE_EXHAUSTED.
                ("grpc.server.max_pending_requests", pending_limit),
                ("grpc.server.max_pending_requests_hard_limit", pending_limit),
            ],
        )
        for service in self._services:
            service.add_to_server(service.servicer, server)
        names = [service.name for service in self._services]
        if self._with_health:
            self._health = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
            reflection.enable_server_reflection(
                (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
        try:
            port = bind_port(server, endpoint.host, endpoint.port, self._credentials)
        except OSError as exc:
            raise ConfigError(f"{self._section}.port", str(exc)) from exc
        self._server = server
        await server.start()
        self.port = port
        if self._health is not None and endpoint.health_port is not None:
            self._health_port = HealthPort(self._health, endpoint.health_host, endpoint.health_port)
            try:
                self.health_port = await self._health_port.start()
            except OSError as exc:
                raise ConfigError(f"{self._section}.health_port", str(exc)) from exc
        return port

    async def set_serving(self) -> None:
        """SERVING for the whole server ("") and each service."""
        if self._health is None:
            return
        for name in ("", *(service.name for service in self._services)):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def set_not_serving(self) -> None:
        """NOT_SERVING for every service, and ignore later changes (graceful shutdown)."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        """Stop accepting RPCs; in-flight ones get ``grace_s`` seconds, then are cancelled."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        # Probes see NOT_SERVING until the very end, then the probe port closes too.
        if self._health_port is not None:
            await self._health_port.close()
            self._health_port = None
