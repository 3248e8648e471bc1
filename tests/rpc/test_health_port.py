"""HealthPort: a plaintext health-only listener sharing the main server's HealthServicer."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from barp_sidecar.errors import ConfigError
from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.rpc.health_port import HealthPort
from barp_sidecar.settings import load_settings

CALL_TIMEOUT_S = 5.0


async def probe(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S)
        return int(response.status)


async def test_reports_the_shared_status_and_nothing_else() -> None:
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    port = HealthPort(servicer, "127.0.0.1", 0)
    bound = await port.start()
    try:
        assert bound > 0 and port.bound_port == bound
        assert await probe(bound) == health_pb2.HealthCheckResponse.NOT_SERVING
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await probe(bound) == health_pb2.HealthCheckResponse.SERVING
        await servicer.enter_graceful_shutdown()
        assert await probe(bound) == health_pb2.HealthCheckResponse.NOT_SERVING
        # Only health is served here: the Router service is not reachable through the probe port.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bound}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await router_pb2_grpc.RouterStub(channel).Route(
                    router_pb2.RouteRequest(prompt="hi"), timeout=CALL_TIMEOUT_S
                )
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await port.close()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await probe(bound)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await port.close()  # idempotent


async def test_a_port_in_use_is_refused() -> None:
    servicer = health.aio.HealthServicer()
    first = HealthPort(servicer, "127.0.0.1", 0)
    bound = await first.start()
    try:
        with pytest.raises(OSError, match=str(bound)):
            await HealthPort(servicer, "127.0.0.1", bound).start()
    finally:
        await first.close()


def test_health_port_setting_is_validated() -> None:
    assert load_settings(None, {}).server.health_port is None
    settings = load_settings(None, {"BARP__SERVER__HEALTH_PORT": "50053"})
    assert settings.server.health_port == 50053 and settings.server.health_host == "0.0.0.0"
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"BARP__SERVER__HEALTH_PORT": "50051"})
    assert caught.value.key == "server.health_port"
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"BARP__SERVER__HEALTH_PORT": "70000"})
    assert caught.value.key == "server.health_port"
