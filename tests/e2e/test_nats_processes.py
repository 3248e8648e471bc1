"""Real processes on the NATS event transport: ``nats-server -js``, a trainer and a sidecar, killed for real.

- The broker is unreachable when the sidecar starts: it still serves Route and SERVING, records outcomes
  into its spool, shows ``barp_event_broker_state{state="unreachable"}`` and the log line, and delivers
  everything once the broker appears.
- kill -9 of the broker and of the trainer during traffic: no Route fails, and every acknowledged
  ReportOutcome is in the trainer's event log exactly once.
- Invalid NATS settings exit 2 naming the key, before anything binds.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.learning_processes import (
    ROOT,
    SidecarProcess,
    TrainerProcess,
    free_port,
    report_outcomes,
    scrape,
    stored_event_ids,
)
from tests.support.nats_server import NatsServer, require_nats_server
from tests.support.sidecar import ARMS, HASH_ENCODER, make_tiny_checkpoint

EVENTS_FAST = "  reconnect_initial_backoff_s: 0.05\n  reconnect_max_backoff_s: 0.5\n  connect_timeout_s: 1\n"


def events_yaml(url: str) -> str:
    return f"events:\n  backend: nats\n  nats_urls: [{url}]\n" + EVENTS_FAST


def trainer_yaml(data_dir: Path, metrics_port: int, nats_url: str) -> str:
    return (
        "server:\n  host: 127.0.0.1\n  port: 0\n  grace_s: 1\n"
        f"storage:\n  data_dir: {data_dir}\n"
        f"metrics:\n  enabled: true\n  port: {metrics_port}\n"
        f"learner:\n  initial_policy: latest_or_cold\n  arms: [{', '.join(ARMS)}]\n"
        f"  encoder_id: {HASH_ENCODER.encoder_id}\n  encoder_dim: {HASH_ENCODER.dim}\n"
        f"  encoder_max_seq_length: {HASH_ENCODER.max_seq_length}\n  encoder_truncation: tail\n"
        "  tau_usd: 0.005\n  batch_size: 16\n"
        "publish:\n  every_events: 100000\n  every_s: 600\n" + events_yaml(nats_url)
    )


def sidecar_yaml(tmp: Path, port: int, metrics_port: int, nats_url: str) -> str:
    return (
        f"server:\n  host: 127.0.0.1\n  port: {port}\n  grace_s: 1\n"
        f"metrics:\n  enabled: true\n  port: {metrics_port}\n"
        "admin:\n  enabled: false\n"
        f"policy:\n  checkpoint_dir: {tmp / 'policy'}\n  device: cpu\n"
        "routing:\n  default_exploration: epsilon_greedy\n  epsilon: 0.3\n  seed: 1\n"
        f"rewards:\n  spool_dir: {tmp / 'spool'}\n  spool_fsync_interval_ms: 2\n"
        f"state:\n  dir: {tmp / 'state'}\n" + events_yaml(nats_url)
    )


async def until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s} s"
        await asyncio.sleep(0.1)


class World:
    def __init__(self, tmp: Path) -> None:
        require_nats_server()
        make_tiny_checkpoint(tmp / "policy")
        self.tmp = tmp
        self.broker = NatsServer(tmp / "nats-store")
        self.trainer_metrics = free_port()
        self.sidecar_port = free_port()
        self.sidecar_metrics = free_port()
        (tmp / "trainer.yaml").write_text(
            trainer_yaml(tmp / "trainer", self.trainer_metrics, self.broker.url)
        )
        self.trainer = TrainerProcess(tmp / "trainer.yaml", free_port(), tmp / "trainer.log")
        (tmp / "sidecar.yaml").write_text(
            sidecar_yaml(tmp, self.sidecar_port, self.sidecar_metrics, self.broker.url)
        )
        self.sidecar = SidecarProcess(tmp / "sidecar.yaml", tmp / "sidecar.log")

    async def report(self, count: int, prefix: str) -> list[str]:
        """Route + ReportOutcome ``count`` prompts (any failure fails the test); the recorded decision ids."""
        return await report_outcomes(self.sidecar_port, count, prefix)

    async def health(self) -> int:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.sidecar_port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            return int(reply.status)

    def stored_ids(self) -> list[str]:
        return stored_event_ids(self.tmp / "trainer" / "events")


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    for process in (w.sidecar, w.trainer):
        if process.process is not None:
            process.stop()
    w.broker.stop()


async def test_broker_unreachable_at_start_the_sidecar_serves_spools_and_delivers_later(world):
    await asyncio.to_thread(world.sidecar.start)  # no broker yet
    assert await world.health() == health_pb2.HealthCheckResponse.SERVING
    ids = await world.report(40, "no broker")
    state = 'barp_event_broker_state{state="unreachable"}'
    await until(lambda: scrape(world.sidecar_metrics, state) == 1.0, 20, "unreachable metric")
    assert scrape(world.sidecar_metrics, "barp_spool_unacked_events") == 40
    assert b'"event_broker_unreachable"' in (world.tmp / "sidecar.log").read_bytes()
    await asyncio.to_thread(world.broker.start)
    await asyncio.to_thread(world.trainer.start)
    await until(lambda: scrape(world.sidecar_metrics, "barp_spool_unacked_events") == 0, 60, "delivery")
    connected = 'barp_event_broker_state{state="connected"}'
    assert scrape(world.sidecar_metrics, connected) == 1.0
    await until(lambda: len(world.stored_ids()) >= 40, 30, "trainer log")
    await asyncio.to_thread(world.trainer.stop)
    assert sorted(world.stored_ids()) == sorted(ids)


async def test_broker_and_trainer_kill9_during_traffic_lose_and_duplicate_nothing(world):
    await asyncio.to_thread(world.broker.start)
    await asyncio.to_thread(world.trainer.start)
    await asyncio.to_thread(world.sidecar.start)
    reporting = asyncio.create_task(world.report(300, "steady"))
    await asyncio.sleep(0.5)
    await asyncio.to_thread(world.broker.kill)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(world.broker.start)  # same port and store: stream and consumer survive
    await asyncio.sleep(0.5)
    await asyncio.to_thread(world.trainer.kill)
    ids = await reporting  # Route and ReportOutcome never failed while broker and trainer died
    ids += await world.report(50, "trainer down")
    await asyncio.to_thread(world.trainer.start)
    await until(lambda: scrape(world.sidecar_metrics, "barp_spool_unacked_events") == 0, 60, "delivery")
    await until(
        lambda: scrape(world.trainer_metrics, "barp_trainer_nats_events_stored_total") is not None, 30, "up"
    )
    await until(lambda: len(set(world.stored_ids())) >= len(ids), 60, "trainer caught up")
    await asyncio.to_thread(world.trainer.stop)
    stored = world.stored_ids()
    assert len(stored) == len(ids) == len(set(stored))
    assert sorted(stored) == sorted(ids)


@pytest.mark.parametrize(
    ("events", "key"),
    [
        ("  nats_urls: [http://127.0.0.1:4222]\n", "events.nats_urls[0]"),
        (
            "  nats_user: barp\n  nats_password_env: BARP_TEST_NATS_PASSWORD_UNSET\n",
            "events.nats_password_env",
        ),
        ("  nats_creds_file: /nonexistent/barp.creds\n", "events.nats_creds_file"),
        ("  nats_token_env: T\n  nats_creds_file: /x\n", "events.nats_creds_file"),
    ],
)
def test_invalid_nats_settings_exit_2_naming_the_key(tmp_path, events, key):
    make_tiny_checkpoint(tmp_path / "policy")
    port = free_port()
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        f"server:\n  host: 127.0.0.1\n  port: {port}\nmetrics:\n  enabled: false\nadmin:\n  enabled: false\n"
        f"policy:\n  checkpoint_dir: {tmp_path / 'policy'}\n  device: cpu\n"
        f"rewards:\n  spool_dir: {tmp_path / 'spool'}\nstate:\n  dir: {tmp_path / 'state'}\n"
        f"events:\n  backend: nats\n{events}"
    )
    env = {k: v for k, v in os.environ.items() if k != "BARP_TEST_NATS_PASSWORD_UNSET"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "barp_sidecar.cli", "serve", "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert key in result.stderr
