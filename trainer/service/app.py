"""Composition root of ``barp-trainer serve``: build -> start -> wait for stop -> ordered shutdown.

Owns wiring and lifecycle only: event log, checkpoint store, starting policy, training loop, gRPC server
(Trainer + health + reflection, optional TLS/mTLS) and metrics. Shutdown order: health NOT_SERVING ->
close announcements (WatchPolicy streams end) -> ``server.stop(grace_s)`` (in-flight acks finish) ->
stop the training loop -> close the log (final fsync).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from barp_sidecar.gen.barp.v1 import trainer_pb2, trainer_pb2_grpc
from barp_sidecar.policy.checkpoint import CheckpointStore
from trainer.service.eventlog import SegmentedEventLog
from trainer.service.loop import TrainingLoop
from trainer.service.metrics import TrainerCollector
from trainer.service.policy_source import PolicyAnnouncer, starting_policy
from trainer.service.servicer import TrainerServicer
from trainer.service.settings import TrainerSettings

log = structlog.get_logger("trainer.service.app")
SERVICE_NAME = "barp.v1.Trainer"


def server_credentials(settings: TrainerSettings) -> grpc.ServerCredentials | None:
    s = settings.server
    if s.tls_cert_file is None or s.tls_key_file is None:
        return None
    key = Path(s.tls_key_file).read_bytes()
    cert = Path(s.tls_cert_file).read_bytes()
    ca = Path(s.tls_client_ca_file).read_bytes() if s.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


class TrainerApp:
    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings
        self.event_log: SegmentedEventLog | None = None
        self.store = CheckpointStore(settings.checkpoints_dir)
        self.announcer = PolicyAnnouncer()
        self.loop: TrainingLoop | None = None
        self.servicer: TrainerServicer | None = None
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.metrics_port = 0
        self._metrics_server: object | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        s = self.settings
        self.event_log = await asyncio.to_thread(
            SegmentedEventLog(
                s.events_dir,
                s.storage.segment_max_bytes,
                s.storage.retention_max_bytes,
                s.storage.retention_max_age_s,
            ).open
        )
        starting = await asyncio.to_thread(starting_policy, s.learner, self.store)
        self.loop = TrainingLoop(self.event_log, self.store, self.announcer, starting, s.learner, s.publish)
        await self.loop.start()
        manifest = self.loop.manifest
        self.servicer = TrainerServicer(
            self.event_log,
            self.store,
            self.announcer,
            manifest.arms,
            manifest.architecture.embedding_dim,
            s.publish.chunk_bytes,
        )
        self.server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", 8 << 20), ("grpc.so_reuseport", 0)]
        )
        trainer_pb2_grpc.add_TrainerServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        address = f"{s.server.host}:{s.server.port}"
        credentials = server_credentials(s)
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if s.metrics.enabled:
            registry = CollectorRegistry()
            registry.register(TrainerCollector(self))
            server, _thread = start_http_server(s.metrics.port, addr=s.metrics.host, registry=registry)
            self._metrics_server = server
            self.metrics_port = server.server_port
        await asyncio.to_thread(Path(s.storage.data_dir, "PORT").write_text, f"{self.port}\n")
        log.info(
            "trainer_started",
            port=self.port,
            metrics_port=self.metrics_port,
            version=manifest.version,
            arms=len(manifest.arms),
            tls=credentials is not None,
        )

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def close(self) -> None:
        await self.health.enter_graceful_shutdown()
        await self.announcer.close()
        if self.server is not None:
            await self.server.stop(self.settings.server.grace_s)
        if self.loop is not None:
            await self.loop.close()
        if self.event_log is not None:
            await asyncio.to_thread(self.event_log.close)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()  # type: ignore[attr-defined]
        log.info("trainer_stopped")
