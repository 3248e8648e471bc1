"""The training loop: log -> learner -> evaluation gate -> checkpoint store -> announcement.

Owns scheduling (poll the log, train in full batches, evaluate every N events or T seconds) and the
publish decision; the update rule lives in ``learner.py``, storage in the event log and the
``CheckpointStore``. Heavy work (reading the log, gradient steps, evaluation, saving) runs in a worker
thread, one step at a time, so the event loop keeps serving ingestion.

After every new batch, ``replay_steps`` more steps run on random batches of recent training events
(experience replay, seeded: deterministic for a given event order). Held-out events (1 in
``holdout_every`` by event-id hash) are never trained on; the most recent ones form
the gate's evaluation slice. A candidate is published as version v+1 iff
SNIPS(candidate) >= SNIPS(current) − ``gate_margin`` on that slice, with at least
``gate_min_holdout_events`` events. Each decision is logged (``policy_gate``) with both estimates and their
confidence intervals, and counted in ``GateCounters``.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
from opentelemetry.trace import NoOpTracer, Tracer

from barp_sidecar.gen.barp.v1 import trainer_pb2
from barp_sidecar.policy.checkpoint import CheckpointStore, PolicyManifest
from barp_sidecar.policy.network import PolicyNetwork
from barp_sidecar.tasks import cancel_and_wait
from trainer.service.eventlog import EventLog
from trainer.service.learner import (
    CostImputer,
    Estimate,
    LearnerHyperParameters,
    OnlineLearner,
    is_holdout,
    snips,
    to_batch,
)
from trainer.service.policy_source import PolicyAnnouncer, StartingPolicy, announcement_for
from trainer.service.settings import LearnerSettings, PublishSettings

log = structlog.get_logger("trainer.service.loop")


@dataclass
class GateCounters:
    evaluations: int = 0
    published: int = 0
    rejected: int = 0
    skipped_small_holdout: int = 0
    last_candidate: dict[str, Any] = field(default_factory=dict)
    last_current: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    publish: bool
    candidate: Estimate
    current: Estimate
    reason: str


def gate(candidate: Estimate, current: Estimate, margin: float, min_events: int) -> GateDecision:
    """Pure publish rule: enough held-out events, and the candidate not worse than current − margin."""
    if candidate.events < min_events:
        return GateDecision(
            False, candidate, current, f"holdout has {candidate.events} < {min_events} events"
        )
    if candidate.value >= current.value - margin:
        return GateDecision(True, candidate, current, "candidate within margin of current or better")
    return GateDecision(False, candidate, current, "candidate worse than current by more than the margin")


class TrainingLoop:
    """Owns the learner, the held-out slice and the published-version state. ``start()`` / ``close()``."""

    def __init__(
        self,
        event_log: EventLog,
        store: CheckpointStore,
        announcer: PolicyAnnouncer,
        starting: StartingPolicy,
        learner_settings: LearnerSettings,
        publish_settings: PublishSettings,
        poll_interval_s: float = 0.05,
        tracer: Tracer | None = None,
    ) -> None:
        self._tracer = tracer or NoOpTracer()
        self.event_log = event_log
        self.store = store
        self.announcer = announcer
        self.learner_settings = learner_settings
        self.publish_settings = publish_settings
        self.poll_interval_s = poll_interval_s
        self.manifest = starting.manifest
        self.arms = starting.manifest.arms
        self.tau_usd = starting.manifest.tau_usd
        self.learner = OnlineLearner(
            copy.deepcopy(starting.network),
            LearnerHyperParameters(
                learning_rate=learner_settings.learning_rate,
                entropy_coef=learner_settings.entropy_coef,
                max_importance_weight=learner_settings.max_importance_weight,
                augment_preferences=learner_settings.augment_preferences,
                max_grad_norm=learner_settings.max_grad_norm,
                logit_l2=learner_settings.logit_l2,
            ),
            seed=learner_settings.seed,
        )
        self.published_network: PolicyNetwork = copy.deepcopy(starting.network).eval()
        self.imputer = CostImputer(len(self.arms))
        self.cursor = starting.log_offset
        # Offset of the first event not yet inside the learner's weights (what a restart replays from).
        self.trained_offset = starting.log_offset
        self.pending: list[tuple[int, trainer_pb2.RewardEvent]] = []
        self.holdout: deque[trainer_pb2.RewardEvent] = deque(maxlen=learner_settings.holdout_max_events)
        self.replay: deque[trainer_pb2.RewardEvent] = deque(maxlen=learner_settings.replay_buffer_events)
        self.replay_rng = np.random.default_rng(learner_settings.seed)
        self.events_since_evaluation = 0
        self.last_evaluation_monotonic_s = time.monotonic()
        self.counters = GateCounters()
        self._task: asyncio.Task[None] | None = None
        self._starting_source = starting.source

    @property
    def current_version(self) -> int:
        return self.manifest.version

    async def start(self) -> None:
        """Make sure the starting policy is published (v1 of a fresh store), announce it, start the loop."""
        await asyncio.to_thread(self._ensure_published)
        await self.announcer.publish(announcement_for(self.store, self.manifest))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="training-loop")

    def _ensure_published(self) -> None:
        latest = self.store.latest_version()
        if self._starting_source == "latest" and latest == self.manifest.version:
            return
        version = (latest or 0) + 1
        manifest = PolicyManifest(
            **{
                **self.manifest.__dict__,
                "version": version,
                "parent_version": latest,
                "created_at_unix_s": time.time(),
                "training": {**self.manifest.training, "initial_policy": self._starting_source},
            }
        )
        self.manifest = self.store.publish(self.published_network, manifest)
        log.info("initial_policy_published", version=version, source=self._starting_source)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            progressed = await asyncio.to_thread(self.step)
            if progressed.get("published") is not None:
                await self.announcer.publish(progressed["published"])
            if not progressed.get("events"):
                await asyncio.sleep(self.poll_interval_s)

    def step(self) -> dict[str, Any]:
        """Read new events, train on full batches, evaluate when due. Runs in a worker thread."""
        batch_size = self.learner_settings.batch_size
        records = self.event_log.read_from(self.cursor, 4 * batch_size)
        for offset, event in records:
            self.cursor = offset + 1
            if is_holdout(event.event_id, self.learner_settings.holdout_every):
                self.holdout.append(event)
            else:
                self.pending.append((offset, event))
        while len(self.pending) >= batch_size:
            chunk, self.pending = self.pending[:batch_size], self.pending[batch_size:]
            events = [e for _, e in chunk]
            self.learner.step(to_batch(events, self.arms, self.tau_usd, self.imputer))
            self.replay.extend(events)
            for _ in range(self.learner_settings.replay_steps):
                picks = self.replay_rng.integers(0, len(self.replay), batch_size)
                replayed = [self.replay[int(i)] for i in picks]
                self.learner.step(
                    to_batch(replayed, self.arms, self.tau_usd, self.imputer, observe_costs=False),
                    replayed=True,
                )
            self.events_since_evaluation += len(chunk)
            self.trained_offset = self.pending[0][0] if self.pending else self.cursor
        result: dict[str, Any] = {"events": len(records), "published": None}
        due_events = self.events_since_evaluation >= self.publish_settings.every_events
        due_time = (
            self.events_since_evaluation > 0
            and time.monotonic() - self.last_evaluation_monotonic_s >= self.publish_settings.every_s
        )
        if due_events or due_time:
            result["published"] = self.evaluate_and_maybe_publish()
        return result

    def evaluate_and_maybe_publish(self) -> Any:
        """The gate, in a ``barp.trainer.publish`` span: its decision and the version it published, if any."""
        with self._tracer.start_as_current_span("barp.trainer.publish", record_exception=True) as span:
            announcement = self._evaluate_and_maybe_publish()
            span.set_attributes(
                {
                    "barp.published": announcement is not None,
                    "barp.version": self.manifest.version,
                    "barp.events_trained": self.learner.events_trained,
                }
            )
            return announcement

    def _evaluate_and_maybe_publish(self) -> Any:
        self.events_since_evaluation = 0
        self.last_evaluation_monotonic_s = time.monotonic()
        self.counters.evaluations += 1
        if not self.holdout:
            self.counters.skipped_small_holdout += 1
            log.info("policy_gate", decision="skipped", reason="no held-out events yet")
            return None
        holdout_batch = to_batch(list(self.holdout), self.arms, self.tau_usd, CostImputer(len(self.arms)))
        candidate = snips(self.learner.network, holdout_batch)
        current = snips(self.published_network, holdout_batch)
        decision = gate(
            candidate,
            current,
            self.publish_settings.gate_margin,
            self.publish_settings.gate_min_holdout_events,
        )
        self.counters.last_candidate = candidate.to_json()
        self.counters.last_current = current.to_json()
        fields = {
            "candidate": candidate.to_json(),
            "current": current.to_json(),
            "current_version": self.manifest.version,
            "events_trained": self.learner.events_trained,
            "reason": decision.reason,
        }
        if not decision.publish:
            small = candidate.events < self.publish_settings.gate_min_holdout_events
            if small:
                self.counters.skipped_small_holdout += 1
            else:
                self.counters.rejected += 1
            log.info("policy_gate", decision="skipped" if small else "rejected", **fields)
            return None
        network = copy.deepcopy(self.learner.network).eval()
        version = max(self.store.versions(), default=0) + 1
        manifest = PolicyManifest(
            **{
                **self.manifest.__dict__,
                "version": version,
                "parent_version": self.manifest.version,
                "created_at_unix_s": time.time(),
                "training": {
                    "initial_policy": self._starting_source,
                    "log_offset": self.trained_offset,
                    "events_trained": self.learner.events_trained,
                    "steps": self.learner.steps,
                    "seed": self.learner_settings.seed,
                    "hyper_parameters": self.learner.hyper.__dict__,
                },
                "metrics": {"snips_candidate": candidate.to_json(), "snips_parent": current.to_json()},
                "weights_sha256": "",
            }
        )
        self.manifest = self.store.publish(network, manifest)
        self.published_network = network
        self.counters.published += 1
        log.info("policy_gate", decision="published", version=version, **fields)
        return announcement_for(self.store, self.manifest)
