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

With ``failover.enabled`` (several replicas, docs/learning.md §10) ``start`` brings up the log, this
replica's own durable consumer, the gRPC server and the ``LeaseKeeper`` only; the training loop and the
fenced policy mirror start when the lease is won (``_take_over``: the latest version and its learner
state from the Object Store, resume just after its stream position in this replica's log). A replica
that loses its lease stops training and publishing at once and exits with ``EXIT_LEASE_LOST`` (its
supervisor restarts it as a standby). A graceful stop (SIGTERM) of the active replica stops the training
loop and the mirror first, then releases the lease, so the standby takes over at its next poll.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import random
import socket
import time
from collections.abc import Mapping
from pathlib import Path

import structlog
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import start_http_server

from barp_sidecar.backoff import ReconnectBackoff
from barp_sidecar.broker.nats_connection import NatsConnector
from barp_sidecar.broker.settings import EventsBackend
from barp_sidecar.errors import ConfigError
from barp_sidecar.gen.barp.v1 import trainer_pb2, trainer_pb2_grpc
from barp_sidecar.policy.checkpoint import CheckpointStore
from barp_sidecar.rpc.server import GrpcServer, Service
from barp_sidecar.tracing import Tracing
from trainer.service.config_reload import ConfigReloader
from trainer.service.eventlog import SegmentedEventLog
from trainer.service.failover import (
    LeaseKeeper,
    download_latest,
    learn_model_list,
    resume_offset,
    retry_while_held,
)
from trainer.service.loop import TrainingLoop
from trainer.service.metrics import trainer_registry
from trainer.service.model_pool import PoolChangeError, PoolHistory, check_pool
from trainer.service.nats_ingest import NatsEventIngestor
from trainer.service.nats_policy_mirror import NatsPolicyMirror, PointerFence
from trainer.service.policy_source import PolicyAnnouncer, StartingPolicy, starting_policy
from trainer.service.servicer import TrainerServicer
from trainer.service.settings import TrainerSettings

log = structlog.get_logger("trainer.service.app")
SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name
# Reward streams carry up to 1,024 events (embeddings) per message batch.
MAX_MESSAGE_BYTES = 8 << 20
# Concurrent streams (sidecars) the trainer expects; sizes gRPC core's queue of calls not yet handled.
MAX_PENDING_RPCS = 1024
# Exit code of a replica that lost its trainer lease (the supervisor restarts it as a standby).
EXIT_LEASE_LOST = 3


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
        self.exit_code = 0
        self.lease_keeper: LeaseKeeper | None = None
        self.takeover_s: float | None = None  # lease won -> training loop running (failover)
        self.pool_history: PoolHistory | None = None  # each version's model list (validation, training)
        self._takeover_task: asyncio.Task[None] | None = None

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
        if s.failover.enabled:
            await self._sync_latest()  # a standby validates events against the latest model list
        starting = await asyncio.to_thread(starting_policy, s.learner, self.store)
        manifest = starting.manifest
        if s.failover.enabled:
            # Shared by validation (consumer, servicer) and, once active, the training loop; the consumer
            # learns the lists of versions other replicas published from their manifests.
            self.pool_history = PoolHistory(self.store, manifest.models, manifest.version)
        else:
            self.loop = self._training_loop(starting)
            await self.loop.start()
            manifest = self.loop.manifest
            self.pool_history = self.loop.history
        self.servicer = TrainerServicer(
            self.event_log,
            self.store,
            self.announcer,
            manifest.models,
            manifest.architecture.embedding_dim,
            s.publish.chunk_bytes,
            tracer=self._tracer,
            history=self.pool_history,
        )
        if self.nats_connector is not None:
            replica = self.replica_id if s.failover.enabled else None
            self.ingestor = NatsEventIngestor(
                self.nats_connector,
                self.event_log,
                manifest.models,
                manifest.architecture.embedding_dim,
                consumer=f"{s.events.consumer}-{replica}" if replica else None,
                history=self.pool_history,
                learn_models=(
                    functools.partial(learn_model_list, self.pool_history, s.events) if replica else None
                ),
            )
            await self.ingestor.start()
            if s.failover.enabled:
                self.lease_keeper = LeaseKeeper(
                    self.nats_connector, self.replica_id, s.failover.lease_bucket, s.failover.lease_ttl_s
                )
                await self.lease_keeper.start()
                self._takeover_task = asyncio.get_running_loop().create_task(
                    self._take_over(), name="trainer-takeover"
                )
            else:
                self.policy_mirror = NatsPolicyMirror(self.nats_connector, self.store, self.announcer)
                await self.policy_mirror.start()
        self.server.add_service(
            Service(SERVICE_NAME, trainer_pb2_grpc.add_TrainerServicer_to_server, self.servicer)
        )
        self.port = await self.server.start()
        self.health_port = self.server.health_port or 0
        await self.server.set_serving()
        if s.metrics.enabled:
            registry = trainer_registry(self)
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
            replica=self.replica_id if s.failover.enabled else None,
        )

    async def _sync_latest(self) -> None:
        """Failover: fetch the announced latest version into this replica's store before it starts, when the
        broker answers (otherwise the local store's LATEST serves until the takeover downloads it)."""
        assert self.nats_connector is not None
        try:
            version, _ = await download_latest(
                self.nats_connector, self.store, self.store.root.parent / "learner-state"
            )
        except Exception as exc:  # broker unreachable or slow: not fatal for a standby
            log.warning("trainer_latest_not_synced", error=repr(exc))
            return
        log.info("trainer_latest_synced", version=version)

    @property
    def replica_id(self) -> str:
        return self.settings.failover.replica_id or socket.gethostname().replace(".", "-")[:64]

    def _training_loop(self, starting: StartingPolicy) -> TrainingLoop:
        s = self.settings
        assert self.event_log is not None
        may_publish = self.lease_keeper.lease.held if self.lease_keeper is not None else (lambda: True)
        loop = TrainingLoop(
            self.event_log,
            self.store,
            self.announcer,
            starting,
            s.learner,
            s.publish,
            tracer=self._tracer,
            may_publish=may_publish,
            history=self.pool_history,
        )
        if s.learner.arms and starting.source != "cold":
            try:  # the configured pool differs from the stored policy's: change it (validated first)
                loop.request_pool(s.learner.arms)
            except PoolChangeError as exc:
                raise ConfigError("learner.arms", str(exc).removeprefix("learner.arms: ")) from exc
        return loop

    async def _take_over(self) -> None:
        """Failover: once the lease is won, start training where the latest published version ended,
        publish only while the lease holds, and stop the replica the moment it is lost."""
        keeper, s, connector = self.lease_keeper, self.settings, self.nats_connector
        assert keeper is not None and connector is not None and self.event_log is not None
        try:
            await keeper.acquired.wait()
            won = time.monotonic()
            state_dir = self.store.root.parent / "learner-state"
            version, revision = await retry_while_held(
                lambda: download_latest(connector, self.store, state_dir),
                keeper.lease.held,
                ReconnectBackoff(
                    s.events.reconnect_initial_backoff_s, s.events.reconnect_max_backoff_s, random.Random()
                ),
                s.failover.resume_wait_s,
            )
            starting = await asyncio.to_thread(starting_policy, s.learner, self.store)
            if version is not None:
                ingestor = self.ingestor
                offset = await resume_offset(
                    self.event_log,
                    starting.manifest,
                    s.failover.resume_wait_s,
                    reached=(lambda: ingestor.position) if ingestor is not None else None,
                )
                starting = dataclasses.replace(starting, log_offset=offset)
            self.loop = self._training_loop(starting)
            await self.loop.start()
            fence = PointerFence(
                revision, version or 0, keeper.lease.held, state_dir, lambda reason: keeper.lease.lose(reason)
            )
            self.policy_mirror = NatsPolicyMirror(connector, self.store, self.announcer, fence=fence)
            await self.policy_mirror.start()
            self.takeover_s = time.monotonic() - won
            log.info(
                "trainer_active",
                replica=self.replica_id,
                resumed_version=version,
                log_offset=starting.log_offset,
                takeover_s=round(self.takeover_s, 3),
            )
            # The lease's local validity is a clock deadline as well as renewals, so it is polled.
            while keeper.lease.held():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            reason = "lease lost"
            keeper.lease.lose("its local validity ran out before a renewal")  # no-op when already lost
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("trainer_takeover_failed", error=repr(exc))
            reason = f"takeover failed: {exc!r}"
            keeper.lease.lose(reason)
        # Stop publishing and training now; close() (via request_stop) does the rest.
        for component in (self.policy_mirror, self.loop):
            if component is not None:
                await component.close()
        log.error("trainer_standing_down", replica=self.replica_id, reason=reason, exit_code=EXIT_LEASE_LOST)
        self.exit_code = EXIT_LEASE_LOST
        self.request_stop()

    def apply_settings(self, previous: TrainerSettings | None, settings: TrainerSettings) -> None:
        """Apply re-read settings: a changed ``learner.arms`` changes the model pool (PoolChangeError when it
        cannot be served: nothing changes); other changed keys wait for a restart (logged). A failover
        standby keeps the new pool for its takeover (the active replica applies it now), so taking over
        never reverts a pool change made through the config file."""
        if self.loop is None and not self.settings.failover.enabled:
            raise ConfigError("learner.arms", "the trainer is not running yet")
        if settings.learner.arms:
            if self.loop is not None:
                self.loop.request_pool(settings.learner.arms)
            else:
                check_pool(settings.learner.arms)
                learner = dataclasses.replace(self.settings.learner, arms=settings.learner.arms)
                self.settings = dataclasses.replace(self.settings, learner=learner)
                log.info("model_pool_kept_for_takeover", pool=list(settings.learner.arms))
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
        if self._takeover_task is not None and not self._takeover_task.done():
            self._takeover_task.cancel()
            await asyncio.gather(self._takeover_task, return_exceptions=True)
        if self.lease_keeper is not None:
            # Nothing is trained or published after this point; then the standby may take over at once.
            for publisher in (self.policy_mirror, self.loop):
                if publisher is not None:
                    await publisher.close()
            await self.lease_keeper.release()
        for component in (self.lease_keeper, self.ingestor, self.policy_mirror):
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
