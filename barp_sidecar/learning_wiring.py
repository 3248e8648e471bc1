"""Composition-root wiring of the sidecar's learning loop: built from settings, started/closed in one order.

Part of the composition root (``app.py`` is the other part, and the only caller): this is the one module
below ``app.py`` that may import every package (``rewards``, ``policy``, ``rpc``), so those packages never
import each other upwards. Owns wiring for: pending-decision store + outcome recorder + durable spool
(``rewards``), the publisher and policy watcher towards the trainer (``trainer``), the directory watcher
(``checkpoint_store_dir``), the ``PolicyManager`` and the Admin server (``admin``), and their metrics.
``SidecarApp`` builds one ``LearningComponents`` and calls ``start_recording`` before the Router serves,
``start_background`` after, and ``close`` after the Router and batcher stopped (``app.py`` docstring has
the whole order).

Reward events go to the trainer over gRPC (``trainer.target``) or to a NATS JetStream stream
(``events.backend: nats``); both publishers implement ``rewards.transport.RewardTransport``.

Close order: Admin server -> watchers -> expiry sweep -> publisher (a short drain: acknowledged events are
trimmed; the rest stays in the spool for the next start) -> spool (final fsync) -> trainer channel.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from pathlib import Path

import grpc
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from barp_sidecar.broker.nats_connection import NatsConnector
from barp_sidecar.broker.session_loop import BROKER_STATES
from barp_sidecar.broker.settings import EventsBackend
from barp_sidecar.errors import CheckpointError, ConfigError
from barp_sidecar.policy.manager import CheckpointFetcher, PolicyManager, ServingRegistry
from barp_sidecar.policy.nats_policies import NatsCheckpointFetcher, NatsPolicyWatcher
from barp_sidecar.policy.watcher import DirectoryPolicyWatcher, TrainerCheckpointFetcher, TrainerPolicyWatcher
from barp_sidecar.rewards.nats_publisher import NatsRewardPublisher
from barp_sidecar.rewards.pending import PendingDecisionStore
from barp_sidecar.rewards.pending_journal import PendingJournal
from barp_sidecar.rewards.publisher import RewardPublisher
from barp_sidecar.rewards.recorder import OutcomeRecorder
from barp_sidecar.rewards.spool import RewardSpool
from barp_sidecar.rewards.transport import RewardTransport
from barp_sidecar.rpc.admin import AdminServer
from barp_sidecar.rpc.tls import channel_credentials, client_files_from, open_channel
from barp_sidecar.settings import Settings

log = structlog.get_logger(__name__)
# Seconds the publisher may spend delivering the spool at shutdown (the rest is resent at the next start).
SHUTDOWN_DRAIN_S = 2.0


def trainer_channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    """A channel to the trainer: TLS when credentials are given (``rpc.tls``), else plaintext."""
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", 8 << 20),
        ("grpc.keepalive_time_ms", 30_000),
    ]
    return open_channel(target, credentials, options)


def required_dir(directory: str | None, key: str) -> str:
    """A directory setting that ``settings.resolve_state_dirs`` has filled in (``load_settings`` does)."""
    if directory is None:
        raise ConfigError(key, "is not set (load settings with load_settings, which resolves state.dir)")
    return directory


class LearningComponents:
    """Everything of the learning loop that lives in a sidecar."""

    def __init__(self, settings: Settings, registry: ServingRegistry, env: Mapping[str, str]) -> None:
        r, t = settings.rewards, settings.trainer
        self.settings = settings
        self.sidecar_id = r.sidecar_id or socket.gethostname()
        nats = settings.events.backend is EventsBackend.NATS
        # NATS: credentials, TLS files and the optional client are checked now (ConfigError naming the key).
        self.nats_connector = (
            NatsConnector(settings.events, env, f"barp-sidecar/{self.sidecar_id}")
            if nats and (r.enabled or (t.target is None and t.watch_policies))
            else None
        )
        # The manager fetches versions announced by the trainer (or pinned through Admin) over the trainer
        # channel, which start_recording opens once the event loop runs, or, without a trainer target, from
        # the NATS Object Store that the trainer mirrors its versions into (followed by a KV watcher).
        follows_nats = self.nats_connector is not None and t.target is None and t.watch_policies
        fetcher: CheckpointFetcher | None = None
        nats_fetcher: NatsCheckpointFetcher | None = None
        if t.target is not None and t.watch_policies:
            fetcher = TrainerCheckpointFetcher(
                self._open_channel, Path(required_dir(t.checkpoint_cache_dir, "trainer.checkpoint_cache_dir"))
            )
        elif follows_nats:
            nats_fetcher = NatsCheckpointFetcher(
                Path(required_dir(t.checkpoint_cache_dir, "trainer.checkpoint_cache_dir"))
            )
            fetcher = nats_fetcher.fetch
        self.manager = PolicyManager(registry, settings.policy.checkpoint_dir or "builtin", fetcher)
        self.nats_policy_watcher = (
            NatsPolicyWatcher(self.nats_connector, nats_fetcher, self.manager)
            if self.nats_connector is not None and nats_fetcher is not None
            else None
        )
        self.spool: RewardSpool | None = None
        self.recorder: OutcomeRecorder | None = None
        # A trainer target or the NATS stream drains the spool; without either, outcomes are kept for one
        # under a smaller quota.
        delivers = t.target is not None or nats
        if r.enabled:
            quota = (
                r.spool_max_bytes if delivers else min(r.spool_max_bytes, r.spool_max_bytes_without_trainer)
            )
            spool_dir = Path(required_dir(r.spool_dir, "rewards.spool_dir"))
            self.spool = RewardSpool(spool_dir, quota, r.spool_fsync_interval_ms)
            self.recorder = OutcomeRecorder(
                PendingDecisionStore(r.pending_ttl_s, r.pending_max_entries),
                self.spool,
                self.sidecar_id,
                r.expiry_action,
                r.default_quality,
                sweep_interval_s=r.expiry_sweep_interval_s,
                # Pending decisions and recorded ids survive restarts next to the spool they feed.
                journal=PendingJournal(spool_dir, r.pending_ttl_s, tuple(registry.current().manifest.models)),
                trainer_attached=delivers,
            )
        self.channel: grpc.aio.Channel | None = None
        self.publisher: RewardTransport | None = None
        self.trainer_watcher: TrainerPolicyWatcher | None = None
        self.directory_watcher: DirectoryPolicyWatcher | None = None
        self._trainer_settings = t
        # The admin token is checked now so a non-loopback bind without a token fails before anything binds.
        self.admin = AdminServer(settings.admin, self.manager, env) if settings.admin.enabled else None
        if t.checkpoint_store_dir is not None:
            self.directory_watcher = DirectoryPolicyWatcher(
                self.manager, Path(t.checkpoint_store_dir), t.checkpoint_poll_interval_s
            )
        # TLS towards the trainer (CA, optional client certificate for mTLS): the files are read and checked
        # now (ConfigError naming the key); the channel itself is made in start_recording because grpc.aio
        # channels belong to the running event loop.
        self._trainer_credentials = (
            channel_credentials(client_files_from(t, "trainer")) if t.target is not None else None
        )

    def _open_channel(self) -> grpc.aio.Channel:
        if self.channel is None:
            raise CheckpointError("fetch: the trainer channel is not open (the sidecar is not started)")
        return self.channel

    def register_metrics(self, registry: CollectorRegistry) -> None:
        registry.register(LearningCollector(self))

    async def start_recording(self) -> None:
        """Before the Router serves: the spool is recovered and ReportOutcome can record."""
        t = self._trainer_settings
        if self.spool is not None and self.recorder is not None:
            await self.spool.start()
            await self.recorder.start()
        if self.spool is not None and self.nats_connector is not None and self.settings.rewards.enabled:
            self.publisher = NatsRewardPublisher(self.spool, self.nats_connector)
        if t.target is not None:
            self.channel = trainer_channel(t.target, self._trainer_credentials)
            if self.spool is not None and self.publisher is None:
                self.publisher = RewardPublisher(
                    self.spool, self.channel, t.reconnect_initial_backoff_s, t.reconnect_max_backoff_s
                )
            if t.watch_policies:
                self.trainer_watcher = TrainerPolicyWatcher(
                    self.manager,
                    self.channel,
                    self.sidecar_id,
                    t.reconnect_initial_backoff_s,
                    t.reconnect_max_backoff_s,
                )

    async def start_background(self) -> int | None:
        """After the Router serves: publisher, watchers, Admin. Returns the Admin port (None = disabled)."""
        for component in (
            self.publisher,
            self.trainer_watcher,
            self.nats_policy_watcher,
            self.directory_watcher,
        ):
            if component is not None:
                await component.start()
        if self.admin is not None:
            try:
                return await self.admin.start()
            except OSError as exc:
                raise ConfigError("admin.port", str(exc)) from exc
        return None

    async def close(self) -> None:
        if self.admin is not None:
            await self.admin.close(grace_s=1.0)
        for watcher in (self.trainer_watcher, self.nats_policy_watcher, self.directory_watcher):
            if watcher is not None:
                await watcher.close()
        if self.recorder is not None:
            await self.recorder.close()
        if self.publisher is not None:
            drained = await self.publisher.drain(SHUTDOWN_DRAIN_S) if self.publisher.connected else False
            await self.publisher.close()
            if self.spool is not None and not drained:
                log.info("spool_left_for_next_start", unacked_events=self.spool.unacked_events)
        if self.spool is not None:
            await self.spool.close()
        if self.channel is not None:
            await self.channel.close()
            self.channel = None


class LearningCollector(Collector):
    """Learning-loop metrics, read from the components' counters at scrape time."""

    def __init__(self, components: LearningComponents) -> None:
        self.c = components

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self.c
        if c.recorder is not None:
            counters = c.recorder.counters
            outcomes = CounterMetricFamily(
                "barp_outcomes", "ReportOutcome results and expiries, by result", labels=["result"]
            )
            for label, value in (
                ("recorded", counters.recorded),
                ("repeated", counters.repeated),
                ("not_found", counters.not_found),
                ("expired_dropped", counters.expired_dropped),
                ("expired_defaulted", counters.expired_defaulted),
                ("refused_spool_full", counters.refused_spool_full),
                ("skipped_fallback", counters.skipped_fallback),
            ):
                outcomes.add_metric([label], value)
            yield outcomes
            yield GaugeMetricFamily(
                "barp_pending_decisions", "Decisions waiting for ReportOutcome", value=len(c.recorder.store)
            )
            yield GaugeMetricFamily(
                "barp_trainer_configured",
                "1 when trainer.target is set; 0 = outcomes are only kept in the spool for a future trainer",
                value=float(c.recorder.trainer_attached),
            )
            yield CounterMetricFamily(
                "barp_outcomes_kept_without_trainer",
                "Outcomes recorded while no trainer is configured (kept in the spool, not learned from yet)",
                value=counters.kept_without_trainer,
            )
        if c.spool is not None:
            yield GaugeMetricFamily("barp_spool_bytes", "Bytes in the reward spool", value=c.spool.size_bytes)
            yield GaugeMetricFamily(
                "barp_spool_unacked_events",
                "Spooled events not yet acknowledged",
                value=c.spool.unacked_events,
            )
            yield CounterMetricFamily(
                "barp_spool_refused",
                "Reward events refused because the spool was full",
                value=c.spool.refused_total,
            )
            yield CounterMetricFamily(
                "barp_spool_torn_records_dropped",
                "Torn records cut at recovery",
                value=c.spool.torn_records_dropped,
            )
        if c.publisher is not None:
            p = c.publisher.counters
            yield CounterMetricFamily(
                "barp_reward_events_sent", "Reward events sent to the trainer", value=p.sent
            )
            yield CounterMetricFamily(
                "barp_reward_events_rejected",
                "Reward events the trainer rejected as malformed",
                value=p.rejected,
            )
            yield GaugeMetricFamily(
                "barp_trainer_connected",
                "1 when the reward stream is connected",
                value=float(c.publisher.connected),
            )
        if isinstance(c.publisher, NatsRewardPublisher):
            state = GaugeMetricFamily(
                "barp_event_broker_state", "1 for the NATS broker's current state", labels=["state"]
            )
            for name in BROKER_STATES:
                state.add_metric([name], float(c.publisher.state == name))
            yield state
            yield CounterMetricFamily(
                "barp_event_broker_connect_failures",
                "Failed connection attempts to the NATS broker",
                value=c.publisher.connect_failures,
            )
            yield CounterMetricFamily(
                "barp_reward_events_duplicate",
                "Resent reward events JetStream recognised by Nats-Msg-Id",
                value=c.publisher.duplicates,
            )
        yield CounterMetricFamily("barp_policy_swaps", "Hot swaps performed", value=c.manager.swaps_total)
        rejected = CounterMetricFamily(
            "barp_policy_rejected",
            "Checkpoints rejected (the serving policy stayed), by reason",
            labels=["reason"],
        )
        for reason, count in sorted(c.manager.rejected_total.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield GaugeMetricFamily(
            "barp_policy_pinned_version",
            "Pinned policy version (0 = following the trainer)",
            value=c.manager.pinned_version or 0,
        )
