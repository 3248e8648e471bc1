"""A plaintext listener that serves only ``grpc.health.v1``, for Kubernetes' native gRPC probes.

Owns one small grpc.aio server that shares the main server's ``HealthServicer`` (so both report the same
status at every moment). It exists because the kubelet probes ``<pod IP>:<port>`` in plaintext: it cannot
reach a Router port bound to loopback (the sidecar mode) nor complete a TLS or mTLS handshake (the
standalone router and the trainer on the network). Health status carries no data worth protecting, and
this port answers nothing else: no Router, Admin or Trainer method is reachable through it.

It does not own the health status: the composition root sets it (SERVING after the policy loaded,
NOT_SERVING at shutdown) on the shared servicer and closes this listener after the main server.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from barp_sidecar.rpc.tls import bind_port


class HealthPort:
    """``start()`` binds ``host:port`` (port 0 = any free port) and returns the bound port; ``close()``."""

    def __init__(self, servicer: health.aio.HealthServicer, host: str, port: int) -> None:
        self._servicer = servicer
        self._host = host
        self._port = port
        self._server: grpc.aio.Server | None = None
        self.bound_port: int | None = None

    async def start(self) -> int:
        if self._server is not None:
            raise RuntimeError("HealthPort already started")
        # No SO_REUSEPORT: a second process must not silently share the probe port.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)
        self.bound_port = bind_port(server, self._host, self._port, None)
        await server.start()
        self._server = server
        return self.bound_port

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop answering probes; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace_s)
