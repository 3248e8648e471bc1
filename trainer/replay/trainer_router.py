"""The production trainer under replay: the service's own ``TrainingLoop`` and learner, the sidecar's own
``choose_model``, an in-memory event log and a checkpoint store in a temporary directory.

Owns the glue only (no learning code of its own): each event is decided by the *published* policy (what
sidecars serve) with the sidecar's exploration, appended to the log as a ``RewardEvent`` exactly as a
sidecar would send it, and the loop steps. The loop's clock is constant, so the gate runs on event counts
alone and a replay is reproducible. A pool change goes through the loop's own ``request_pool`` (the path a
configuration change takes in service); decisions are mapped by name between the published version's arm
list and the replay's.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch

from barp_sidecar.domain import ExplorationMode
from barp_sidecar.gen.barp.v1 import trainer_pb2
from barp_sidecar.policy.checkpoint import CheckpointStore
from barp_sidecar.routing.exploration import choose_model
from trainer.replay.memory_log import MemoryEventLog
from trainer.service.loop import TrainingLoop
from trainer.service.policy_source import PolicyAnnouncer, cold_policy
from trainer.service.settings import TrainerSettings


class TrainerRouter:
    """One cold-started trainer (settings as given, arms/τ/seed from the replay). ``close()`` when done."""

    def __init__(
        self,
        name: str,
        settings: TrainerSettings,
        arms: tuple[str, ...],
        tau_usd: float,
        seed: int,
        exploration: ExplorationMode,
        epsilon: float,
        embedding_dim: int,
        pool: tuple[str, ...] | None = None,
    ) -> None:
        """``arms``: every arm of the replay (decision indices refer to it); ``pool``: the arms served at
        the start (default all)."""
        self.name = name
        learner = dataclasses.replace(
            settings.learner,
            initial_policy="cold",
            arms=arms if pool is None else pool,
            tau_usd=tau_usd,
            seed=seed,
            encoder_dim=embedding_dim,
        )
        self._directory = tempfile.TemporaryDirectory(prefix="barp-replay-")
        self.loop = TrainingLoop(
            MemoryEventLog(),
            CheckpointStore(Path(self._directory.name) / "checkpoints"),
            PolicyAnnouncer(),
            cold_policy(learner),
            learner,
            settings.publish,
            clock=lambda: 0.0,
        )
        self.loop.ensure_published()
        self.arms = arms
        self.seed = seed
        self.exploration = exploration
        self.epsilon = epsilon
        self.rng = np.random.default_rng([seed, 1])

    def _published_index(self) -> np.ndarray:
        """For each arm of the published version (``history.current``), its index in the replay's arms."""
        return np.array([self.arms.index(name) for name in self.loop.history.current], dtype=np.int64)

    @torch.inference_mode()
    def choose(self, event_index: int, x: np.ndarray, quality_weight: float) -> tuple[int, float]:
        probabilities = self.loop.published_network.probabilities(
            torch.from_numpy(x).reshape(1, -1), torch.tensor([quality_weight])
        )[0].numpy()
        allowed = np.ones(len(probabilities), dtype=bool)
        index, propensity = choose_model(probabilities, allowed, self.exploration, self.epsilon, self.rng)
        return int(self._published_index()[index]), propensity

    def change_pool(self, names: tuple[str, ...]) -> None:
        """Serve the arms ``names`` from the next event on: the loop's pool change, published at once."""
        self.loop.request_pool(names)
        self.loop.step()

    def observe(
        self,
        event_index: int,
        x: np.ndarray,
        quality_weight: float,
        arm: int,
        propensity: float,
        quality: float,
        cost_usd: float,
    ) -> None:
        event = trainer_pb2.RewardEvent(
            event_id=f"replay-{self.seed}-{event_index}",
            sequence=event_index + 1,
            sidecar_id="replay",
            embedding=x.tolist(),
            quality_weight=quality_weight,
            model=self.arms[arm],
            propensity=propensity,
            policy_version=self.loop.current_version,
            quality=quality,
            cost_usd=cost_usd,
        )
        self.loop.event_log.append([event])
        self.loop.step()

    @torch.inference_mode()
    def greedy_arms(self, xs: np.ndarray, quality_weight: float) -> np.ndarray:
        logits = self.loop.published_network(
            torch.from_numpy(np.ascontiguousarray(xs, dtype=np.float32)),
            torch.full((len(xs),), quality_weight),
        )
        return self._published_index()[logits.argmax(dim=1).numpy()]

    def published_versions(self) -> int:
        return self.loop.counters.published

    def gate_counts(self) -> dict[str, int]:
        c = self.loop.counters
        return {"published": c.published, "rejected": c.rejected, "skipped": c.skipped_small_holdout}

    def close(self) -> None:
        self._directory.cleanup()
