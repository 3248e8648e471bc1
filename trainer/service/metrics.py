"""Prometheus metrics of the trainer, read from the components' counters at scrape time.

Owns metric names and help texts and the trainer's registry (``trainer_registry``: these families plus
the process, Python platform and GC collectors and ``barp_build_info``, as on the sidecar, without
``*_created`` series); the components own plain counters (no prometheus imports there). Every family is
documented in docs/metrics.md, "Trainer" (a test checks).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from barp_sidecar.broker.session_loop import BROKER_STATES
from barp_sidecar.exposition import standard_registry
from trainer.service.lease import LEASE_STATES

if TYPE_CHECKING:
    from trainer.service.app import TrainerApp


def trainer_registry(app: TrainerApp) -> CollectorRegistry:
    """A registry of its own (several trainers may live in one test process) with every trainer metric."""
    registry = standard_registry()
    registry.register(TrainerCollector(app))
    return registry


class TrainerCollector(Collector):
    """The trainer's own families, read from its components at scrape time."""

    def __init__(self, app: TrainerApp) -> None:
        self.app = app

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        ingest = self.app.servicer.counters if self.app.servicer else None
        loop = self.app.loop
        if ingest is not None:
            for name, value, doc in (
                ("barp_trainer_events_received", ingest.received, "Reward events received."),
                ("barp_trainer_events_stored", ingest.stored, "Reward events stored durably (new)."),
                ("barp_trainer_events_duplicate", ingest.duplicates, "Reward events dropped as duplicates."),
                ("barp_trainer_events_rejected", ingest.rejected, "Malformed reward events rejected."),
                ("barp_trainer_acks", ingest.acks, "PublishAck messages sent."),
            ):
                yield CounterMetricFamily(name, doc, value=value)
            yield GaugeMetricFamily(
                "barp_trainer_publish_streams", "Open PublishRewards streams.", value=ingest.streams_open
            )
        ingestor = self.app.ingestor
        if ingestor is not None:
            n = ingestor.counters
            for name, value, doc in (
                ("barp_trainer_nats_events_received", n.received, "Messages fetched from the event stream."),
                ("barp_trainer_nats_events_stored", n.stored, "Stream events stored durably (new)."),
                ("barp_trainer_nats_events_duplicate", n.duplicates, "Stream events already in the log."),
                (
                    "barp_trainer_nats_events_redelivered",
                    n.redelivered,
                    "Redeliveries at or below the stored stream position (acknowledged, skipped).",
                ),
                (
                    "barp_trainer_nats_consumer_restarts",
                    n.consumer_restarts,
                    "Consumer restarts after a delivery out of turn (keeps the log in stream order).",
                ),
                (
                    "barp_trainer_nats_connect_failures",
                    ingestor.connect_failures,
                    "Failed broker connections.",
                ),
            ):
                yield CounterMetricFamily(name, doc, value=value)
            dead = CounterMetricFamily(
                "barp_trainer_nats_events_dead_lettered",
                "Messages copied to the dead-letter subject and skipped, by kind.",
                labels=["kind"],
            )
            for kind in ("undecodable", "foreign", "invalid"):
                dead.add_metric([kind], n.dead_lettered[kind])
            yield dead
            yield GaugeMetricFamily(
                "barp_trainer_nats_connected",
                "1 while the durable consumer is connected.",
                value=ingestor.connected,
            )
            state = GaugeMetricFamily(
                "barp_trainer_nats_state",
                "1 for the event consumer's broker state (connecting, connected, unreachable, "
                "auth_failed, session_failed).",
                labels=["state"],
            )
            for name in BROKER_STATES:
                state.add_metric([name], 1.0 if ingestor.state == name else 0.0)
            yield state
            yield GaugeMetricFamily(
                "barp_trainer_nats_stream_sequence",
                "Stream sequence of the last message stored in the event log (or dead-lettered).",
                value=ingestor.position,
            )
        keeper = self.app.lease_keeper
        if keeper is not None:
            lease = keeper.lease
            state = GaugeMetricFamily(
                "barp_trainer_lease_state",
                "1 for this replica's trainer-lease state (standby, active, lost, released).",
                labels=["state"],
            )
            for name in LEASE_STATES:
                state.add_metric([name], 1.0 if lease.state == name else 0.0)
            yield state
            yield CounterMetricFamily(
                "barp_trainer_lease_renewals",
                "Successful renewals of the trainer lease.",
                value=lease.renewals,
            )
            if self.app.takeover_s is not None:
                yield GaugeMetricFamily(
                    "barp_trainer_takeover_seconds",
                    "Seconds from winning the lease to training (policy hand-over and resume).",
                    value=self.app.takeover_s,
                )
        reloader = self.app.reloader
        if reloader is not None:
            reloads = CounterMetricFamily(
                "barp_trainer_config_reloads",
                "Re-reads of the config file (on change or SIGHUP), by result.",
                labels=["result"],
            )
            reloads.add_metric(["applied"], reloader.reloads)
            reloads.add_metric(["refused"], reloader.failures)
            yield reloads
        if self.app.event_log is not None:
            yield GaugeMetricFamily(
                "barp_trainer_event_log_bytes",
                "Size of the retained event log.",
                value=self.app.event_log.size_bytes,
            )
        if loop is not None:
            gate = CounterMetricFamily(
                "barp_trainer_gate_decisions", "Evaluation gate decisions.", labels=["decision"]
            )
            gate.add_metric(["published"], loop.counters.published)
            gate.add_metric(["rejected"], loop.counters.rejected)
            gate.add_metric(["skipped"], loop.counters.skipped_small_holdout)
            yield gate
            yield GaugeMetricFamily(
                "barp_trainer_policy_version", "Published version.", value=loop.current_version
            )
            yield CounterMetricFamily(
                "barp_trainer_events_trained",
                "Events used in gradient steps.",
                value=loop.learner.events_trained,
            )
            yield GaugeMetricFamily(
                "barp_trainer_models", "Models in the published version's model list.", value=len(loop.models)
            )
            yield CounterMetricFamily(
                "barp_trainer_model_pool_changes",
                "Versions published by a model-pool change (added, retired or dropped models).",
                value=loop.pool_changes,
            )
            yield CounterMetricFamily(
                "barp_trainer_events_not_trained",
                "Events kept in the log but not trained on: their model was dropped from the pool.",
                value=loop.events_not_trained,
            )
            estimates = GaugeMetricFamily(
                "barp_trainer_gate_estimate",
                "The gate's last off-policy estimate of the candidate's and the current policy's reward.",
                labels=["policy", "estimator"],
            )
            for key, policy in (("last_candidate", "candidate"), ("last_current", "current")):
                estimate = getattr(loop.counters, key)
                if estimate:
                    estimates.add_metric([policy, loop.counters.last_estimator], estimate["value"])
            yield estimates
