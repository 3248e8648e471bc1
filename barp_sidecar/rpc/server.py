"""The grpc.aio server of the sidecar: Router + standard health + reflection, bound from ServerSettings.

Owns server options, binding (insecure or TLS/mTLS, credentials from ``rpc.tls``), the health status and
the optional plaintext health-only port for Kubernetes probes (``server.health_port``, ``rpc.health_port``).
Servicers are built elsewhere and passed in.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from barp_sidecar.errors import ConfigError
from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.rpc.health_port import HealthPort
from barp_sidecar.rpc.tls import bind_port, server_credentials, server_files_from
from barp_sidecar.settings import ServerSettings

# Floor of gRPC core's queue of calls not yet handed to a handler (its default soft limit is 1000).
MIN_CORE_PENDING_REQUESTS = 16384
ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name


class GrpcServer:
    """Owns the grpc.aio server; built in ``start`` (grpc.aio needs the running loop), which binds and
    returns the port. TLS files are read and checked at construction so a bad file fails before anything
    binds."""

    def __init__(
        self,
        settings: ServerSettings,
        router: router_pb2_grpc.RouterServicer,
        *,
        max_pending_rpcs: int = 1024,
        interceptors: tuple[grpc.aio.ServerInterceptor, ...] = (),
    ) -> None:
        self._settings = settings
        self._interceptors = interceptors
        self._max_pending_rpcs = max_pending_rpcs
        self._router = router
        self._credentials = server_credentials(server_files_from(settings, "server"))
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._health_port: HealthPort | None = None
        self.port: int | None = None
        self.health_port: int | None = None

    async def start(self) -> int:
        settings = self._settings
        self._health = health.aio.HealthServicer()
        pending_limit = max(MIN_CORE_PENDING_REQUESTS, 4 * self._max_pending_rpcs)
        server = grpc.aio.server(
            interceptors=self._interceptors,
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                # Two sidecars must never silently share one port.
                ("grpc.so_reuseport", 0),
                # gRPC core randomly CANCELs calls not yet picked up by the app beyond 1000 (soft limit):
                # a burst must instead reach admission control and get a clear RESOURCE_EXHAUSTED.
                ("grpc.server.max_pending_requests", pending_limit),
                ("grpc.server.max_pending_requests_hard_limit", pending_limit),
            ],
        )
        router_pb2_grpc.add_RouterServicer_to_server(self._router, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (ROUTER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            port = bind_port(server, settings.host, settings.port, self._credentials)
        except OSError as exc:
            raise ConfigError("server.port", str(exc)) from exc
        self._server = server
        await server.start()
        self.port = port
        if settings.health_port is not None:
            self._health_port = HealthPort(self._health, settings.health_host, settings.health_port)
            try:
                self.health_port = await self._health_port.start()
            except OSError as exc:
                raise ConfigError("server.health_port", str(exc)) from exc
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
        # Probes see NOT_SERVING until the very end, then the probe port closes too.
        if self._health_port is not None:
            await self._health_port.close()
            self._health_port = None
