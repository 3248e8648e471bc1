"""The trainer over TLS / mTLS in-process on 127.0.0.1:0, reached the way sidecars reach it: a channel built
from the sidecar's ``trainer.tls_*`` settings, the reward publisher delivering through it; plus the
plaintext health-only port for Kubernetes probes.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from barp_sidecar.errors import ConfigError
from barp_sidecar.learning_wiring import trainer_channel
from barp_sidecar.rewards.publisher import RewardPublisher
from barp_sidecar.rewards.spool import RewardSpool
from barp_sidecar.rpc.tls import channel_credentials, client_files_from
from barp_sidecar.settings import load_settings
from tests.learning_helpers import random_event, trainer_settings_yaml
from tests.tls_certs import Pki, make_pki
from trainer.service.app import TrainerApp
from trainer.service.settings import load_trainer_settings

CALL_TIMEOUT_S = 5.0
DELIVERY_TIMEOUT_S = 20.0


def trainer_config(tmp_path: Path, pki: Pki, *, mutual: bool) -> Path:
    data = yaml.safe_load(trainer_settings_yaml(tmp_path / "data", every_events=64, every_s=0.5))
    data["server"].update(
        {
            "tls_cert_file": str(pki.server_cert),
            "tls_key_file": str(pki.server_key),
            "health_port": 0,
            "health_host": "127.0.0.1",
        }
    )
    if mutual:
        data["server"]["tls_client_ca_file"] = str(pki.ca_cert)
    path = tmp_path / "trainer.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sidecar_trainer_client(pki: Pki, port: int, *, with_cert: bool) -> grpc.aio.Channel:
    """The channel a sidecar opens from its settings (trainer.target + trainer.tls_*)."""
    env = {"BARP__TRAINER__TARGET": f"localhost:{port}", "BARP__TRAINER__TLS_CA_FILE": str(pki.ca_cert)}
    if with_cert:
        env["BARP__TRAINER__TLS_CERT_FILE"] = str(pki.client_cert)
        env["BARP__TRAINER__TLS_KEY_FILE"] = str(pki.client_key)
    settings = load_settings(None, env)
    assert settings.trainer.target is not None
    credentials = channel_credentials(client_files_from(settings.trainer, "trainer"))
    return trainer_channel(settings.trainer.target, credentials)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


async def health(channel: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S
    )
    return int(response.status)


async def test_mtls_trainer_takes_rewards_from_a_sidecar_with_a_client_cert(tmp_path: Path, pki: Pki) -> None:
    app = TrainerApp(load_trainer_settings(trainer_config(tmp_path, pki, mutual=True), {}))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.health_port}") as probe:
            assert await health(probe) == health_pb2.HealthCheckResponse.SERVING
        async with sidecar_trainer_client(pki, app.port, with_cert=False) as no_cert:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health(no_cert)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        spool = RewardSpool(tmp_path / "spool", 1 << 24, 2.0)
        await spool.start()
        async with sidecar_trainer_client(pki, app.port, with_cert=True) as channel:
            assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
            publisher = RewardPublisher(spool, channel, initial_backoff_s=0.05, max_backoff_s=0.2, seed=0)
            await publisher.start()
            rng = random.Random(3)
            events = [random_event(rng) for _ in range(20)]
            await asyncio.gather(*(spool.append(e) for e in events))
            assert await publisher.drain(timeout_s=DELIVERY_TIMEOUT_S)
            await publisher.close()
        await spool.close()
        stored = {e.event_id for _, e in app.event_log.read_from(0, 1000)}
        assert stored == {e.event_id for e in events}
    finally:
        await app.close()


async def test_tls_trainer_answers_health_to_a_client_trusting_its_ca(tmp_path: Path, pki: Pki) -> None:
    app = TrainerApp(load_trainer_settings(trainer_config(tmp_path, pki, mutual=False), {}))
    await app.start()
    try:
        async with sidecar_trainer_client(pki, app.port, with_cert=False) as channel:
            assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as plaintext:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health(plaintext)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await app.close()


def test_bad_tls_files_fail_before_anything_starts(tmp_path: Path, pki: Pki) -> None:
    config = trainer_config(tmp_path, pki, mutual=True)
    data = yaml.safe_load(config.read_text())
    data["server"]["tls_client_ca_file"] = str(tmp_path / "missing-ca.pem")
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        TrainerApp(load_trainer_settings(config, {}))
    assert caught.value.key == "server.tls_client_ca_file"
    assert not (tmp_path / "data").exists()
