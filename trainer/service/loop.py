"""The training loop: log -> learner -> evaluation gate -> checkpoint store -> announcement.

Owns scheduling (poll the log, train in full batches, evaluate every N events or T seconds) and the
publish decision; the update rule lives in ``learner.py``, storage in the event log and the
``CheckpointStore``. Heavy work (reading the log, gradient steps, evaluation, saving) runs in a worker
thread, one step at a time, so the event loop keeps serving ingestion.

After every new batch, ``replay_steps`` more steps run on random batches of recent training events
(experience replay, seeded: deterministic for a given event order). Held-out events (1 in
``holdout_every`` by event-id hash) are never trained on; the most recent ones form the gate's
evaluation slice. A candidate is evaluated every ``every_events`` training events (sooner while the
learner is young, ``evaluation_interval_events``) and published as version v+1 iff
V(candidate) >= V(current) − ``gate_margin`` on that slice (V: doubly robust for ``reward_model``
candidates, SNIPS otherwise), with at least ``gate_min_holdout_events`` events. With
``gate_fresh_holdout_events`` N > 0 the slice is only the held-out events that arrived after the serving
version was published once there are N of them (``gate_events``: the events that chose the serving version
do not defend it). Each decision is logged (``policy_gate``) with both estimates and their confidence
intervals, and counted in ``GateCounters``.

Model-pool changes (``request_pool``, rules in ``model_pool.py``) are applied by the worker thread at the
start of a step and published at once as the next version (no gate: the known models' estimates are
unchanged; the new rows are priors under an exploration cap); a retired model is dropped from the model
list by a later version. Events naming a model that is no longer in the model list stay in the log and are
not trained on (``events_not_trained``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
import torch
from opentelemetry.trace import NoOpTracer, Tracer

from barp_sidecar.gen.barp.v1 import trainer_pb2
from barp_sidecar.policy.calibration import (
    DEFAULT_CALIBRATION_SIZE,
    CalibrationSet,
    nonfinite_outputs,
    select_calibration,
)
from barp_sidecar.policy.checkpoint import CheckpointStore, PolicyManifest
from barp_sidecar.policy.network import PolicyNetwork
from barp_sidecar.tasks import cancel_and_wait
from trainer.service.eventlog import EventLog
from trainer.service.learner import (
    CostImputer,
    Estimate,
    EventBatch,
    LearnerHyperParameters,
    OnlineLearner,
    doubly_robust,
    is_holdout,
    snips,
    to_batch,
)
from trainer.service.learner_state import load_state, save_state
from trainer.service.model_pool import (
    PoolChangeError,
    PoolHistory,
    PoolPlan,
    PoolState,
    check_pool,
    drop_plan,
    plan_pool,
)
from trainer.service.policy_source import PolicyAnnouncer, StartingPolicy, announcement_for
from trainer.service.reward_model_learner import RewardModelHyperParameters, RewardModelLearner
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
    last_estimator: str = ""  # "doubly_robust" (reward_model candidates) or "snips"


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


def _encoded(events: deque[trainer_pb2.RewardEvent]) -> dict[str, torch.Tensor]:
    """Serialized events as one byte tensor plus their lengths (two tensors, however many events)."""
    blobs = [e.SerializeToString() for e in events]
    return {
        "bytes": torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8)
        if blobs
        else torch.zeros(0, dtype=torch.uint8),
        "lengths": torch.tensor([len(b) for b in blobs], dtype=torch.int64),
    }


def _decoded(encoded: dict[str, torch.Tensor]) -> list[trainer_pb2.RewardEvent]:
    data = encoded["bytes"].numpy().tobytes()
    events, start = [], 0
    for length in encoded["lengths"].tolist():
        events.append(trainer_pb2.RewardEvent.FromString(data[start : start + length]))
        start += length
    return events


def build_learner(network: PolicyNetwork, settings: LearnerSettings) -> OnlineLearner | RewardModelLearner:
    """The learner for the network's kind: REINFORCE for "barp", ridge regression for "reward_model"."""
    if network.architecture.kind == "reward_model":
        return RewardModelLearner(
            network,
            RewardModelHyperParameters(
                ridge_lambda=settings.ridge_lambda,
                prior_events=settings.prior_events,
                exploration_scale=settings.exploration_scale,
                projection_dim=settings.projection_dim,
                prior_quality=settings.prior_quality,
                shared_ridge_lambda=settings.shared_ridge_lambda,
                exploration_bonus=settings.exploration_bonus,
                region_warmup_events=settings.region_warmup_events,
                region_intercept_lambda=settings.region_intercept_lambda,
            ),
        )
    return OnlineLearner(
        network,
        LearnerHyperParameters(
            learning_rate=settings.learning_rate,
            entropy_coef=settings.entropy_coef,
            max_importance_weight=settings.max_importance_weight,
            augment_preferences=settings.augment_preferences,
            max_grad_norm=settings.max_grad_norm,
            logit_l2=settings.logit_l2,
        ),
        seed=settings.seed,
    )


class TrainingLoop:
    """Owns the learner, the held-out slice and the published-version state. ``start()`` / ``close()``.

    ``clock`` (seconds, monotonic) drives the time-based evaluation trigger; a replay passes a constant
    clock so that only event counts decide when the gate runs (reproducible).
    """

    def __init__(
        self,
        event_log: EventLog,
        store: CheckpointStore,
        announcer: PolicyAnnouncer,
        starting: StartingPolicy,
        learner_settings: LearnerSettings,
        publish_settings: PublishSettings,
        poll_interval_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        tracer: Tracer | None = None,
        may_publish: Callable[[], bool] = lambda: True,
        history: PoolHistory | None = None,
    ) -> None:
        """``may_publish`` is checked right before a version is written (trainer failover: the lease).
        ``history``: the model lists known so far (trainer failover: shared with the event consumer, which
        learns the lists of versions other replicas published); a new one otherwise."""
        self._tracer = tracer or NoOpTracer()
        self.may_publish = may_publish
        self.event_log = event_log
        self.store = store
        self.announcer = announcer
        self.learner_settings = learner_settings
        self.publish_settings = publish_settings
        self.poll_interval_s = poll_interval_s
        self.manifest = starting.manifest
        self.models = starting.manifest.models
        self.tau_usd = starting.manifest.tau_usd
        self.clock = clock
        self.learner = build_learner(copy.deepcopy(starting.network), learner_settings)
        self.published_network: PolicyNetwork = copy.deepcopy(starting.network).eval()
        self.imputer = CostImputer(len(self.models))
        self.cursor = starting.log_offset
        # Offset of the first event not yet inside the learner's weights (what a restart replays from).
        self.trained_offset = starting.log_offset
        self.pending: list[tuple[int, trainer_pb2.RewardEvent]] = []
        self.holdout: deque[trainer_pb2.RewardEvent] = deque(maxlen=learner_settings.holdout_max_events)
        # Held-out events that arrived after the serving version was published (the newest of ``holdout``):
        # the ones that did not choose it (``gate_events``). A restored state is a publication's: 0.
        self.holdout_since_publication = 0
        self.replay: deque[trainer_pb2.RewardEvent] = deque(maxlen=learner_settings.replay_buffer_events)
        self.replay_rng = np.random.default_rng(learner_settings.seed)
        self.events_since_evaluation = 0
        self.last_evaluation_monotonic_s = self.clock()
        self.counters = GateCounters()
        self._task: asyncio.Task[None] | None = None
        self._starting_source = starting.source
        self._starting_calibration = starting.calibration
        # Resumable learner state, one file per published version (learner_state.py).
        self.state_dir = self.store.root.parent / "learner-state"
        self._restored_holdout_ids: set[str] = set()
        self.pool = PoolState.from_json(starting.manifest.training.get("model_pool"))
        self.history = (
            history if history is not None else PoolHistory(store, self.models, starting.manifest.version)
        )
        self.history.record(starting.manifest.version, self.models)
        self._pool_request: tuple[str, ...] | None = None
        self.pool_changes = 0
        self.events_not_trained = 0
        if starting.source == "latest":
            self._restore_state()

    # -- resumable state ---------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "learner": self.learner.state(),
            "replay": _encoded(self.replay),
            "holdout": _encoded(self.holdout),
            "imputer": [torch.from_numpy(self.imputer.total_usd), torch.from_numpy(self.imputer.count)],
            "replay_rng": json.dumps(self.replay_rng.bit_generator.state),
        }

    def _restore_state(self) -> None:
        """Restore the learner's statistics saved with the starting version; without them a reward-model
        learner rebuilds its (exact, additive) statistics by re-reading the retained log from the start."""
        version = self.manifest.version
        try:
            state = load_state(self.state_dir, version)
        except ValueError as exc:
            log.warning("learner_state_unreadable", version=version, error=str(exc))
            state = None
        if state is not None:
            try:
                self.learner.load_state(state["learner"])
                self.replay.extend(_decoded(state["replay"]))
                holdout = list(_decoded(state["holdout"]))
                self.holdout.extend(holdout)
                self._restored_holdout_ids = {e.event_id for e in holdout}
                self.imputer.total_usd = state["imputer"][0].double().numpy().copy()
                self.imputer.count = state["imputer"][1].double().numpy().copy()
                self.replay_rng.bit_generator.state = json.loads(state["replay_rng"])
                log.info(
                    "learner_state_restored", version=version, replay=len(self.replay), holdout=len(holdout)
                )
                return
            except (KeyError, ValueError, RuntimeError, TypeError) as exc:
                log.warning("learner_state_unreadable", version=version, error=str(exc))
                self.learner = build_learner(copy.deepcopy(self.published_network), self.learner_settings)
        if isinstance(self.learner, RewardModelLearner):
            self.cursor = self.trained_offset = 0
            log.info("learner_state_missing", version=version, action="re-reading the retained log")
        else:
            log.info("learner_state_missing", version=version, action="fresh optimiser and buffers")

    def _save_state(self, version: int) -> None:
        save_state(self.state_dir, version, self._state())
        # Keep the two newest (a restart needs the LATEST version's; one spare for a pinned rollback).
        for path in sorted(self.state_dir.glob("v*.safetensors"), key=lambda p: int(p.stem[1:]))[:-2]:
            path.unlink(missing_ok=True)

    def calibration_set(self) -> CalibrationSet | None:
        """The calibration set to publish with the next version: real embeddings and preference weights of
        the held-out and replay events (evenly spaced, deterministic); before any event, the starting
        policy's set (None for a cold start: sidecars then dry-run it on random unit vectors)."""
        events = [*self.holdout, *self.replay]
        if events:
            dim = self.published_network.architecture.embedding_dim
            # Only the evenly spaced rows a set keeps are converted (the buffers hold thousands of events).
            rows = np.unique(np.linspace(0, len(events) - 1, num=min(DEFAULT_CALIBRATION_SIZE, len(events))))
            picked = [events[int(i)] for i in rows]
            embeddings = np.array([e.embedding for e in picked if len(e.embedding) == dim], dtype=np.float32)
            weights = np.array([e.quality_weight for e in events], dtype=np.float32)
            chosen = select_calibration(embeddings.reshape(-1, dim), weights)
            if chosen is not None:
                return chosen
        return self._starting_calibration

    @property
    def current_version(self) -> int:
        return self.manifest.version

    # -- model-pool changes ------------------------------------------------------------------------------

    def request_pool(self, requested: tuple[str, ...]) -> bool:
        """Ask for the pool ``requested`` (applied by the next step). PoolChangeError naming the problem
        when it cannot be served; the serving pool is then unchanged. False when nothing would change."""
        if set(requested) == set(self.models) and not self.pool.retired_at_events:
            return False  # the serving pool (e.g. a restart with the same configuration)
        wanted = check_pool(requested)
        plan = plan_pool(self.models, list(self.pool.retired_at_events), wanted)
        if not plan.changed:
            return False
        if not isinstance(self.learner, RewardModelLearner):
            raise PoolChangeError(
                "learner.arms: changing the pool of a running trainer needs a 'reward_model' policy, the "
                f"serving one is {self.learner.network.architecture.kind!r} (start the new pool cold)"
            )
        self._pool_request = wanted
        log.info(
            "model_pool_change_requested",
            pool=list(wanted),
            added=list(plan.added),
            retired=list(plan.retired),
            restored=list(plan.restored),
        )
        return True

    def _apply_requested_pool(self) -> Any:
        requested, self._pool_request = self._pool_request, None
        if requested is None:
            return None
        try:
            plan = plan_pool(self.models, list(self.pool.retired_at_events), requested)
        except PoolChangeError as exc:  # the pool moved since the request was checked
            log.error("model_pool_change_rejected", error=str(exc))
            return None
        if not plan.changed:
            return None
        self.pool.new_models.extend(plan.added)
        for name in plan.retired:
            self.pool.retired_at_events[name] = self.learner.events_trained
        for name in plan.restored:
            self.pool.retired_at_events.pop(name, None)
        return self._publish_pool(plan)

    def _drop_retired(self) -> Any:
        """Drop retired models whose masked version has served ``retire_after_events`` training events."""
        due = [
            name
            for name, at in self.pool.retired_at_events.items()
            if self.learner.events_trained - at >= self.learner_settings.retire_after_events
        ]
        if not due:
            return None
        for name in due:
            del self.pool.retired_at_events[name]
        return self._publish_pool(drop_plan(self.models, due))

    def _publish_pool(self, plan: PoolPlan) -> Any:
        assert isinstance(self.learner, RewardModelLearner)
        if not self.may_publish():
            log.warning("model_pool_change_deferred", reason="this replica does not hold the lease")
            return None
        previous = self.models
        if plan.models != previous:
            self.learner.reindex(previous, plan.models)
            self.imputer = self.imputer.reindexed(previous, plan.models)
            self.models = plan.models
        announcement = self._publish(copy.deepcopy(self._capped_network()).eval(), metrics={})
        self.pool_changes += 1
        log.info(
            "model_pool_changed",
            version=self.manifest.version,
            models=list(self.models),
            added=list(plan.added),
            retired=list(plan.retired),
            restored=list(plan.restored),
            dropped=list(plan.dropped),
            exploration_share=list(self.manifest.architecture.exploration_share),
        )
        return announcement

    def _capped_network(self) -> PolicyNetwork:
        """The learner's network with this version's exploration caps (new models) and masks (retired)."""
        if isinstance(self.learner, RewardModelLearner):
            counts = dict(zip(self.models, self.learner.event_counts(), strict=True))
            caps = self.pool.caps(
                self.models,
                counts.__getitem__,
                self.learner_settings.new_model_min_events,
                self.learner_settings.new_model_share,
            )
            self.learner.set_exploration_share(caps)
        return self.learner.network

    async def start(self) -> None:
        """Make sure the starting policy is published (v1 of a fresh store), announce it, start the loop."""
        await asyncio.to_thread(self.ensure_published)
        await self.announcer.publish(announcement_for(self.store, self.manifest))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="training-loop")

    def ensure_published(self) -> None:
        """Publish the starting policy as the next version unless it is already the store's LATEST."""
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
        self.manifest = self.store.publish(self.published_network, manifest, self.calibration_set())
        log.info("initial_policy_published", version=version, source=self._starting_source)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            # A cancelled to_thread() await leaves its thread running: shield it and, on close(), wait for
            # the step in flight, so no step reads the log or publishes to the store after close() returns
            # (a restarted trainer on the same data_dir would race it for the next version).
            in_flight = asyncio.ensure_future(asyncio.to_thread(self.step))
            try:
                progressed = await asyncio.shield(in_flight)
            except asyncio.CancelledError:
                await asyncio.wait([in_flight])
                raise
            if progressed.get("published") is not None:
                await self.announcer.publish(progressed["published"])
            if not progressed.get("events"):
                await asyncio.sleep(self.poll_interval_s)

    def step(self) -> dict[str, Any]:
        """Read new events, train on full batches, evaluate when due. Runs in a worker thread."""
        batch_size = self.learner_settings.batch_size
        changed = self._apply_requested_pool()
        if changed is not None:
            return {"events": 0, "published": changed}
        records = self.event_log.read_from(self.cursor, 4 * batch_size)
        for offset, event in records:
            self.cursor = offset + 1
            if is_holdout(event.event_id, self.learner_settings.holdout_every):
                if event.event_id in self._restored_holdout_ids:
                    self._restored_holdout_ids.discard(event.event_id)  # already restored with the state
                    continue
                self.holdout.append(event)
                self.holdout_since_publication += 1
            else:
                self.pending.append((offset, event))
        while len(self.pending) >= batch_size:
            chunk, self.pending = self.pending[:batch_size], self.pending[batch_size:]
            events = self._trainable([e for _, e in chunk])
            if events:
                self.learner.step(self._batch(events))
            if self.learner.uses_replay:
                self.replay.extend(events)
            for _ in range(self.learner_settings.replay_steps if self.learner.uses_replay else 0):
                picks = self.replay_rng.integers(0, len(self.replay), batch_size)
                replayed = [self.replay[int(i)] for i in picks]
                self.learner.step(self._batch(self._trainable(replayed), observe_costs=False), replayed=True)
            self.events_since_evaluation += len(chunk)
            self.trained_offset = self.pending[0][0] if self.pending else self.cursor
        result: dict[str, Any] = {"events": len(records), "published": self._drop_retired()}
        if result["published"] is not None:
            return result
        due_events = self.events_since_evaluation >= self.evaluation_interval_events()
        due_time = (
            self.events_since_evaluation > 0
            and self.clock() - self.last_evaluation_monotonic_s >= self.publish_settings.every_s
        )
        if due_events or due_time:
            result["published"] = self.evaluate_and_maybe_publish()
        return result

    def _trainable(self, events: list[trainer_pb2.RewardEvent]) -> list[trainer_pb2.RewardEvent]:
        """Events whose model is in the model list (one dropped from the pool stays in the log, untrained)."""
        kept = [e for e in events if e.model in self.models]
        if len(kept) != len(events):
            self.events_not_trained += len(events) - len(kept)
        return kept

    def _batch(self, events: list[trainer_pb2.RewardEvent], observe_costs: bool = True) -> EventBatch:
        return to_batch(
            events,
            self.models,
            self.tau_usd,
            self.imputer,
            observe_costs,
            decided_with=self.history.decided_with,
        )

    def evaluation_interval_events(self) -> int:
        """New training events between evaluations: ``every_events``, or sooner while the learner is young
        (``max(min_every_events, every_fraction × events trained)``, never more than ``every_events``)."""
        p = self.publish_settings
        if p.min_every_events <= 0:
            return p.every_events
        grown = max(p.min_every_events, int(p.every_fraction * self.learner.events_trained))
        return min(p.every_events, grown)

    def _estimates(self, holdout: EventBatch) -> tuple[Estimate, Estimate, str]:
        """(candidate, current, estimator name). A ``reward_model`` candidate is its own critic: both
        versions are scored doubly robustly with it (paired, low variance); otherwise SNIPS."""
        critic = self.learner.network
        if critic.architecture.kind == "reward_model":
            return (
                doubly_robust(critic, holdout, critic),
                doubly_robust(self.published_network, holdout, critic),
                "doubly_robust",
            )
        return snips(critic, holdout), snips(self.published_network, holdout), "snips"

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

    def gate_events(self) -> list[trainer_pb2.RewardEvent]:
        """The held-out events the gate compares on: those that arrived since the serving version was
        published once there are ``gate_fresh_holdout_events`` of them (the events that chose the serving
        version are not used to defend it: no winner's curse), else the whole held-out slice."""
        fresh_min = self.publish_settings.gate_fresh_holdout_events
        fresh = min(self.holdout_since_publication, len(self.holdout))
        if fresh_min > 0 and fresh >= fresh_min:
            return list(self.holdout)[len(self.holdout) - fresh :]
        return list(self.holdout)

    def _resume_point(self, offset: int) -> dict[str, Any]:
        """Where another replica resumes after a version trained up to ``offset`` (failover.py): the id
        of the event at ``offset - 1`` in the log and, when it came from the stream, its stream sequence."""
        records = self.event_log.read_from(offset - 1, 1) if offset > 0 else []
        if not records or records[0][0] != offset - 1:
            return {"last_event_id": ""}
        event = records[0][1]
        point: dict[str, Any] = {"last_event_id": event.event_id}
        stream = self.event_log.stream_identity_at(offset - 1)
        if event.stream_sequence and stream:
            point.update(stream=stream, stream_sequence=event.stream_sequence)
        return point

    def _evaluate_and_maybe_publish(self) -> Any:
        self.events_since_evaluation = 0
        self.last_evaluation_monotonic_s = self.clock()
        self.counters.evaluations += 1
        holdout = [e for e in self.gate_events() if e.model in self.models]
        if not holdout:
            self.counters.skipped_small_holdout += 1
            log.info("policy_gate", decision="skipped", reason="no held-out events yet")
            return None
        holdout_batch = to_batch(
            holdout,
            self.models,
            self.tau_usd,
            CostImputer(len(self.models)),
            decided_with=self.history.decided_with,
        )
        candidate, current, estimator = self._estimates(holdout_batch)
        decision = gate(
            candidate,
            current,
            self.publish_settings.gate_margin,
            self.publish_settings.gate_min_holdout_events,
        )
        self.counters.last_candidate = candidate.to_json()
        self.counters.last_current = current.to_json()
        self.counters.last_estimator = estimator
        fields = {
            "candidate": candidate.to_json(),
            "current": current.to_json(),
            "current_version": self.manifest.version,
            "events_trained": self.learner.events_trained,
            "reason": decision.reason,
            "estimator": estimator,
        }
        if not decision.publish:
            small = candidate.events < self.publish_settings.gate_min_holdout_events
            if small:
                self.counters.skipped_small_holdout += 1
            else:
                self.counters.rejected += 1
            log.info("policy_gate", decision="skipped" if small else "rejected", **fields)
            return None
        network = copy.deepcopy(self._capped_network()).eval()
        calibration = self.calibration_set()
        if calibration is not None and (bad := nonfinite_outputs(network, *calibration.dry_run_inputs())):
            # Every sidecar would reject it (non_finite): do not publish it at all.
            self.counters.rejected += 1
            fields["reason"] = f"non-finite outputs on {bad} calibration rows (sidecars would reject it)"
            log.info("policy_gate", decision="rejected", **fields)
            return None
        if not self.may_publish():
            log.warning("policy_gate", decision="fenced", reason="this replica does not hold the lease")
            return None
        metrics = {
            "gate_candidate": candidate.to_json(),
            "gate_parent": current.to_json(),
            "estimator": estimator,
        }
        announcement = self._publish(network, metrics, calibration)
        self.counters.published += 1
        log.info("policy_gate", decision="published", version=self.manifest.version, **fields)
        return announcement

    def _publish(
        self, network: PolicyNetwork, metrics: dict[str, Any], calibration: CalibrationSet | None = None
    ) -> Any:
        """Save the learner state and publish ``network`` (models = the current pool) as the next version."""
        if calibration is None:
            calibration = self.calibration_set()
        version = max(self.store.versions(), default=0) + 1
        manifest = PolicyManifest(
            **{
                **self.manifest.__dict__,
                "version": version,
                "parent_version": self.manifest.version,
                "models": self.models,
                "architecture": network.architecture,
                "created_at_unix_s": time.time(),
                "training": {
                    "initial_policy": self._starting_source,
                    "log_offset": self.trained_offset,
                    # Where a standby with its own copy of the log resumes (trainer/service/failover.py).
                    **self._resume_point(self.trained_offset),
                    "events_trained": self.learner.events_trained,
                    "steps": self.learner.steps,
                    "seed": self.learner_settings.seed,
                    "hyper_parameters": self.learner.hyper.__dict__,
                    **(
                        {"model_pool": self.pool.to_json()}
                        if self.pool_changes or self._pool_active()
                        else {}
                    ),
                },
                "metrics": metrics,
                "weights_sha256": "",
            }
        )
        self._save_state(version)  # before the checkpoint: a published version always has its state
        self.manifest = self.store.publish(network, manifest, calibration)
        self.published_network = network
        self.holdout_since_publication = 0
        self.history.record(version, self.models)
        return announcement_for(self.store, self.manifest)

    def _pool_active(self) -> bool:
        return bool(self.pool.new_models or self.pool.retired_at_events)
