"""Composition root of ``barp-trainer serve``: build -> start -> wait for stop -> ordered shutdown.

Owns wiring and lifecycle only: event log, checkpoint store, starting policy, training loop, the NATS
durable consumer and the policy mirror (Object Store + KV) when ``events.backend`` is ``nats``
(``nats_ingest.py``, ``nats_policy_mirror.py``), gRPC server
(the server kit ``barp_sidecar.rpc.server`` shared with the sidecar: Trainer + health + reflection + error
boundary, optional TLS/mTLS, optional plaintext health-only port for Kubernetes probes) and metrics.
Shutdown order: health NOT_SERVING -> close announcements (WatchPolicy streams end) -> stop the NATS
consumer (unacknowledged messages are redelivered later) and policy mirror -> ``server.stop(grace_s)``
(in-flight acks finish) -> stop the training loop -> close the log (final fsync). With a config file,
``config_reload.py`` re-reads it on change or SIGHUP and applies a new ``learner.arms`` (the model pool)
without a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import structlog
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry, start_http_server

from barp_sidecar.broker.nats_connection import NatsConnector
from barp_sidecar.broker.settings import EventsBackend
from barp_sidecar.errors import ConfigError
from barp_sidecar.gen.barp.v1 import trainer_pb2, trainer_pb2_grpc
from barp_sidecar.policy.checkpoint import CheckpointStore
from barp_sidecar.rpc.server import GrpcServer, Service
from barp_sidecar.tracing import Tracing
from trainer.service.config_reload import ConfigReloader
from trainer.service.eventlog import SegmentedEventLog
from trainer.service.loop import TrainingLoop
from trainer.service.metrics import TrainerCollector
from trainer.service.model_pool import PoolChangeError
from trainer.service.nats_ingest import NatsEventIngestor
from trainer.service.nats_policy_mirror import NatsPolicyMirror
from trainer.service.policy_source import PolicyAnnouncer, starting_policy
from trainer.service.servicer import TrainerServicer
from trainer.service.settings import TrainerSettings

log = structlog.get_logger("trainer.service.app")
SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name
# Reward streams carry up to 1,024 events (embeddings) per message batch.
MAX_MESSAGE_BYTES = 8 << 20
# Concurrent streams (sidecars) the trainer expects; sizes gRPC core's queue of calls not yet handled.
MAX_PENDING_RPCS = 1024


class TrainerApp:
    def __init__(
        self,
        settings: TrainerSettings,
        span_exporter: SpanExporter | None = None,
        env: Mapping[str, str] | None = None,
        config_path: str | Path | None = None,
    ) -> None:
        """``span_exporter`` replaces the configured trace exporter (tests); ``env`` is where secrets
        (NATS password/token) are read from (the process environment when None); ``config_path``: the
        file ``settings`` came from, re-read on change and on SIGHUP (None: no reloading)."""
        self.settings = settings
        self._env = dict(os.environ if env is None else env)
        self.reloader = (
            ConfigReloader(config_path, self._env, self.apply_settings) if config_path is not None else None
        )
        self.tracing = Tracing.from_settings(settings.tracing, exporter=span_exporter)
        tracer = self.tracing.tracer if self.tracing.enabled else None
        self._tracer = tracer
        self.event_log: SegmentedEventLog | None = None
        self.store = CheckpointStore(settings.checkpoints_dir)
        self.announcer = PolicyAnnouncer()
        self.loop: TrainingLoop | None = None
        self.servicer: TrainerServicer | None = None
        self.ingestor: NatsEventIngestor | None = None
        self.policy_mirror: NatsPolicyMirror | None = None
        # NATS credentials, TLS files and the optional client are checked before anything opens or binds.
        self.nats_connector = (
            NatsConnector(settings.events, os.environ if env is None else env, "barp-trainer")
            if settings.events.backend is EventsBackend.NATS
            else None
        )
        # The server kit shared with the sidecar; TLS files are read and checked here, before the event log
        # opens or any port binds.
        self.server = GrpcServer(
            settings.server, [], max_message_bytes=MAX_MESSAGE_BYTES, max_pending_rpcs=MAX_PENDING_RPCS
        )
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
        if s.learner.arms and starting.source != "cold":
            try:  # the configured pool differs from the stored policy's: change it (validated first)
                self.loop.request_pool(s.learner.arms)
            except PoolChangeError as exc:
                raise ConfigError("learner.arms", str(exc).removeprefix("learner.arms: ")) from exc
        await self.loop.start()
        manifest = self.loop.manifest
        self.servicer = TrainerServicer(
            self.event_log,
            self.store,
            self.announcer,
            manifest.models,
            manifest.architecture.embedding_dim,
            s.publish.chunk_bytes,
            tracer=self._tracer,
            history=self.loop.history,
        )
        if self.nats_connector is not None:
            self.ingestor = NatsEventIngestor(
                self.nats_connector,
                self.event_log,
                manifest.models,
                manifest.architecture.embedding_dim,
                history=self.loop.history,
            )
            await self.ingestor.start()
            self.policy_mirror = NatsPolicyMirror(self.nats_connector, self.store, self.announcer)
            await self.policy_mirror.start()
        self.server.add_service(
            Service(SERVICE_NAME, trainer_pb2_grpc.add_TrainerServicer_to_server, self.servicer)
        )
        self.port = await self.server.start()
        self.health_port = self.server.health_port or 0
        await self.server.set_serving()
        if s.metrics.enabled:
            registry = CollectorRegistry()
            registry.register(TrainerCollector(self))
            server, _thread = start_http_server(s.metrics.port, addr=s.metrics.host, registry=registry)
            self._metrics_server = server
            self.metrics_port = server.server_port
        if self.reloader is not None:
            await self.reloader.start()
        await asyncio.to_thread(Path(s.storage.data_dir, "PORT").write_text, f"{self.port}\n")
        log.info(
            "trainer_started",
            port=self.port,
            metrics_port=self.metrics_port,
            health_port=self.health_port,
            version=manifest.version,
            arms=len(manifest.models),
            tls=self.server.tls,
            events_backend=s.events.backend.value,
            mtls=s.server.tls_client_ca_file is not None,
        )

    def apply_settings(self, previous: TrainerSettings | None, settings: TrainerSettings) -> None:
        """Apply re-read settings: a changed ``learner.arms`` changes the model pool (PoolChangeError when it
        cannot be served: nothing changes); other changed keys wait for a restart (logged)."""
        if self.loop is None:
            raise ConfigError("learner.arms", "the trainer is not running yet")
        if settings.learner.arms:
            self.loop.request_pool(settings.learner.arms)
        if previous is None:
            return
        pending = [
            name
            for name in ("server", "storage", "publish", "metrics", "logging", "tracing", "events")
            if getattr(settings, name) != getattr(previous, name)
        ]
        if dataclasses.replace(settings.learner, arms=previous.learner.arms) != previous.learner:
            pending.append("learner")
        if pending:
            log.warning("config_change_needs_restart", sections=pending)

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_for_stop(self) -> None:
        await self._stop.wait()

    async def close(self) -> None:
        if self.reloader is not None:
            await self.reloader.close()
        await self.server.set_not_serving()
        await self.announcer.close()
        for component in (self.ingestor, self.policy_mirror):
            if component is not None:
                await component.close()
        await self.server.stop(self.settings.server.grace_s)
        if self.loop is not None:
            await self.loop.close()
        if self.event_log is not None:
            await asyncio.to_thread(self.event_log.close)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()  # type: ignore[attr-defined]
        await asyncio.to_thread(self.tracing.close)
        log.info("trainer_stopped")
