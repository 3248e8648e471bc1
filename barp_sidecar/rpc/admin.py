"""The Admin gRPC service (GetPolicy, ListPolicies, PinPolicy) on its own port, with bearer-token auth.

Owns the Admin wire side: conversion to ``PolicyInfo``, the token interceptor and the small server that
binds ``admin.host:admin.port``. Errors are domain exceptions mapped by the error boundary
(``rpc.boundary``). Policy state lives in ``PolicyManager``.

Loopback binds need no token; any other bind requires one (``admin.token_env`` names the environment
variable that holds it) and every call must send ``authorization: Bearer <token>``; otherwise
UNAUTHENTICATED. The token is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
import structlog

from barp_sidecar.errors import ConfigError, InvalidArgument, Unauthenticated
from barp_sidecar.gen.barp.v1 import admin_pb2, admin_pb2_grpc
from barp_sidecar.policy.manager import PolicyManager
from barp_sidecar.policy.version import PolicyVersion
from barp_sidecar.rpc.server import GrpcServer, PlainEndpoint, Service
from barp_sidecar.settings import AdminSettings

log = structlog.get_logger("barp_sidecar.rpc.admin")
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def admin_token(settings: AdminSettings, env: Mapping[str, str]) -> str | None:
    """The bearer token required by the Admin service, or None on loopback without one configured.

    Raises ConfigError (before anything binds) when bound beyond loopback without a token, or when the
    token is blank or padded with whitespace (a copy-paste accident that would make every call fail)."""
    token = env.get(settings.token_env) or None
    if token is not None and (not token.strip() or token != token.strip()):
        raise ConfigError(
            "admin.token_env",
            f"${settings.token_env} is blank or has leading/trailing whitespace: use a random token",
        )
    if token is None and not is_loopback(settings.host):
        raise ConfigError(
            "admin.token_env",
            f"admin.host {settings.host!r} is not loopback: set ${settings.token_env} to a bearer token",
        )
    return token


def _info(known: PolicyVersion, pinned: int | None) -> admin_pb2.PolicyInfo:
    return admin_pb2.PolicyInfo(
        version=known.version,
        weights_sha256=known.weights_sha256,
        arms=list(known.models),  # admin.proto field name
        encoder=known.encoder,
        created_at_unix_s=known.created_at_unix_s,
        pinned=pinned == known.version,
        source=known.source,
    )


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, manager: PolicyManager) -> None:
        self.manager = manager

    async def GetPolicy(self, request: admin_pb2.GetPolicyRequest, context: grpc.aio.ServicerContext) -> Any:
        return _info(self.manager.current(), self.manager.pinned_version)

    async def ListPolicies(
        self, request: admin_pb2.ListPoliciesRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        pinned = self.manager.pinned_version
        return admin_pb2.ListPoliciesResponse(policies=[_info(k, pinned) for k in self.manager.list()])

    async def PinPolicy(self, request: admin_pb2.PinPolicyRequest, context: grpc.aio.ServicerContext) -> Any:
        if request.version < 0:
            raise InvalidArgument("version", "must be >= 0 (0 unpins)")
        # NotFound / FailedPrecondition propagate to the error boundary (rpc.boundary).
        known = await self.manager.pin(request.version)
        return _info(known, self.manager.pinned_version)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        metadata = dict(handler_call_details.invocation_metadata or ())
        presented = str(metadata.get("authorization", "")).encode()
        if hmac.compare_digest(presented, self._expected):
            return await continuation(handler_call_details)

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            raise Unauthenticated("authorization: missing or wrong bearer token")

        log.warning("admin_call_unauthenticated", method=handler_call_details.method)
        return grpc.unary_unary_rpc_method_handler(deny)


class AdminServer:
    """The Admin service on its own port (the server kit, without health and reflection: every call needs
    the token when one is set). ``start()`` -> bound port; ``close(grace_s)``."""

    def __init__(self, settings: AdminSettings, manager: PolicyManager, env: Mapping[str, str]) -> None:
        self.settings = settings
        self.manager = manager
        self.token = admin_token(settings, env)
        self.port = 0
        self._server = GrpcServer(
            PlainEndpoint(settings.host, settings.port),
            [Service(ADMIN_SERVICE, admin_pb2_grpc.add_AdminServicer_to_server, AdminServicer(manager))],
            section="admin",
            interceptors=[BearerTokenInterceptor(self.token)] if self.token else [],
            health_and_reflection=False,
        )

    async def start(self) -> int:
        self.port = await self._server.start()
        log.info(
            "admin_started", port=self.port, host=self.settings.host, token_required=self.token is not None
        )
        return self.port

    async def close(self, grace_s: float = 1.0) -> None:
        await self._server.stop(grace_s)
