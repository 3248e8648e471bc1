"""Composition root of ``barp-trainer serve``: build -> start -> wait for stop -> ordered shutdown.

Owns wiring and lifecycle only: event log, checkpoint store, starting policy, training loop, gRPC server
(Trainer + health + reflection, optional TLS/mTLS via ``barp_sidecar.rpc.tls``, optional plaintext
health-only port for Kubernetes probes) and metrics. Shutdown order: health NOT_SERVING ->
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
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry, start_http_server

from barp_sidecar.gen.barp.v1 import trainer_pb2, trainer_pb2_grpc
from barp_sidecar.policy.checkpoint import CheckpointStore
from barp_sidecar.rpc.health_port import HealthPort
from barp_sidecar.rpc.tls import bind_port, server_credentials, server_files_from
from barp_sidecar.tracing import Tracing
from trainer.service.eventlog import SegmentedEventLog
from trainer.service.loop import TrainingLoop
from trainer.service.metrics import TrainerCollector
from trainer.service.policy_source import PolicyAnnouncer, starting_policy
from trainer.service.servicer import TrainerServicer
from trainer.service.settings import TrainerSettings

log = structlog.get_logger("trainer.service.app")
SERVICE_NAME = "barp.v1.Trainer"


class TrainerApp:
    def __init__(self, settings: TrainerSettings, span_exporter: SpanExporter | None = None) -> None:
        """``span_exporter`` replaces the configured trace exporter (tests)."""
        self.settings = settings
        self.tracing = Tracing.from_settings(settings.tracing, exporter=span_exporter)
        tracer = self.tracing.tracer if self.tracing.enabled else None
        self._tracer = tracer
        self.event_log: SegmentedEventLog | None = None
        self.store = CheckpointStore(settings.checkpoints_dir)
        self.announcer = PolicyAnnouncer()
        self.loop: TrainingLoop | None = None
        self.servicer: TrainerServicer | None = None
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        # TLS files are read and checked here, before the event log opens or any port binds.
        self.credentials = server_credentials(server_files_from(settings.server, "server"))
        self.health_port_listener: HealthPort | None = None
        self.health_port = 0
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
        self.loop = TrainingLoop(
            self.event_log, self.store, self.announcer, starting, s.learner, s.publish, tracer=self._tracer
        )
        await self.loop.start()
        manifest = self.loop.manifest
        self.servicer = TrainerServicer(
            self.event_log,
            self.store,
            self.announcer,
            manifest.arms,
            manifest.architecture.embedding_dim,
            s.publish.chunk_bytes,
            tracer=self._tracer,
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
        self.port = bind_port(self.server, s.server.host, s.server.port, self.credentials)
        await self.server.start()
        if s.server.health_port is not None:
            self.health_port_listener = HealthPort(self.health, s.server.health_host, s.server.health_port)
            self.health_port = await self.health_port_listener.start()
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
            health_port=self.health_port,
            version=manifest.version,
            arms=len(manifest.arms),
            tls=self.credentials is not None,
            mtls=s.server.tls_client_ca_file is not None,
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
        if self.health_port_listener is not None:
            await self.health_port_listener.close()
        if self.loop is not None:
            await self.loop.close()
        if self.event_log is not None:
            await asyncio.to_thread(self.event_log.close)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()  # type: ignore[attr-defined]
        await asyncio.to_thread(self.tracing.close)
        log.info("trainer_stopped")
