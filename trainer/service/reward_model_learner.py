"""Online learner for ``reward_model`` policies: per-model Bayesian ridge regression of quality and cost.

Owns the sufficient statistics of the regression (the learner's whole state: saving and restoring them
resumes learning exactly), the closed-form update, and the exploration temperature written into the
published network. Knows nothing about files, gRPC or scheduling (the training loop feeds it events).

For each model a, with z = [h(x); 1]:
    A_a = λ·I + Σ z zᵀ          b_a^q = λ·m^q + Σ z·q          b_a^c = λ·m^c + Σ z·min(c/τ, 1)
    θ_a^q = A_a⁻¹ b_a^q         θ_a^c = A_a⁻¹ b_a^c            (m: prior mean, on the bias only)
so q̂_a(x) = θ_a^q·z and ĉ_a(x) = θ_a^c·z, and the policy's logits are β·(w_q·q̂_a − (1 − w_q)·ĉ_a).
Only the logged model's outcome is revealed per event; the regression needs no importance weights (the
regression-oracle view of contextual bandits), so every event counts fully whatever its propensity.

- **Optimism for untried models:** the prior mean quality ``prior_quality`` (default 1) on the bias makes
  a model nobody has tried look good until a handful of its outcomes arrive (λ is worth λ events).
- **Exploration temperature:** β = ``inverse_temperature_scale``·√(1 + events/K). Early on π is flat
  (SAMPLE explores broadly); as the estimates sharpen, π concentrates on the best models (a Boltzmann
  schedule in the spirit of SquareCB's γ ∝ √t). The greedy choice never depends on β.
Deterministic: no randomness at all (same events in the same order → identical weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from barp_sidecar.policy.network import PolicyNetwork
from trainer.service.learner import EventBatch


@dataclass(frozen=True)
class RewardModelHyperParameters:
    ridge_lambda: float = 1.0
    prior_quality: float = 1.0
    prior_cost: float = 0.0
    inverse_temperature_scale: float = 5.0


class RewardModelLearner:
    """Owns the regression statistics and a ``reward_model`` network whose head mirrors their solution."""

    # The regression is exact on all data seen: re-stepping on replayed events would double-count them.
    uses_replay = False

    def __init__(self, network: PolicyNetwork, hyper: RewardModelHyperParameters) -> None:
        architecture = network.architecture
        if architecture.kind != "reward_model" or architecture.head_layers != 0:
            raise ValueError("RewardModelLearner needs a linear 'reward_model' network (head_layers 0)")
        self.network = network.eval()
        self.hyper = hyper
        k, d = architecture.num_arms, architecture.embedding_dim + 1
        self.num_arms = k
        eye = torch.eye(d, dtype=torch.float64)
        self.precision = (hyper.ridge_lambda * eye).repeat(k, 1, 1)  # [K, d, d]
        prior = torch.zeros(k, 2, d, dtype=torch.float64)
        prior[:, 0, -1] = hyper.ridge_lambda * hyper.prior_quality
        prior[:, 1, -1] = hyper.ridge_lambda * hyper.prior_cost
        self.moments = prior  # [K, 2, d]: λ·m + Σ z·(q, ĉ)
        self.arm_events = torch.zeros(k, dtype=torch.int64)
        self.steps = 0
        self.events_trained = 0
        self._solve(range(k))

    def step(self, batch: EventBatch, replayed: bool = False) -> dict[str, float]:
        """Add ``batch`` to the statistics and re-solve the touched models (replayed batches are ignored)."""
        if replayed or len(batch) == 0:
            return {"events": 0.0}
        z = torch.cat([batch.embeddings.double(), torch.ones(len(batch), 1, dtype=torch.float64)], dim=1)
        targets = torch.stack([batch.quality.double(), batch.normalized_cost.double()], dim=1)  # [N, 2]
        touched = sorted(set(batch.action.tolist()))
        for arm in touched:
            rows = batch.action == arm
            za = z[rows]
            self.precision[arm] += za.T @ za
            self.moments[arm] += targets[rows].T @ za
            self.arm_events[arm] += int(rows.sum())
        self.steps += 1
        self.events_trained += len(batch)
        self._solve(touched)
        return {"events": float(len(batch)), "inverse_temperature": self.inverse_temperature()}

    def inverse_temperature(self) -> float:
        return self.hyper.inverse_temperature_scale * math.sqrt(1.0 + self.events_trained / self.num_arms)

    def _solve(self, arms: range | list[int]) -> None:
        k = self.num_arms
        with torch.no_grad():
            weight = self.network.reward_head.weight  # [2K, D]
            bias = self.network.reward_head.bias  # [2K]
            for arm in arms:
                theta = torch.linalg.solve(self.precision[arm], self.moments[arm].T)  # [d, 2]
                for row, column in ((arm, 0), (k + arm, 1)):
                    weight[row] = theta[:-1, column].float()
                    bias[row] = float(theta[-1, column])
            self.network.inverse_temperature.fill_(self.inverse_temperature())

    def state(self) -> dict[str, torch.Tensor]:
        """Everything needed to resume (tensors; saved next to a published checkpoint)."""
        return {
            "precision": self.precision.clone(),
            "moments": self.moments.clone(),
            "arm_events": self.arm_events.clone(),
            "counters": torch.tensor([self.steps, self.events_trained], dtype=torch.int64),
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``state()``; shapes must match this learner's models and embedding size."""
        for name, current in (
            ("precision", self.precision),
            ("moments", self.moments),
            ("arm_events", self.arm_events),
        ):
            if name not in state or tuple(state[name].shape) != tuple(current.shape):
                raise ValueError(f"learner state {name!r} missing or of the wrong shape")
        self.precision = state["precision"].to(torch.float64).clone()
        self.moments = state["moments"].to(torch.float64).clone()
        self.arm_events = state["arm_events"].to(torch.int64).clone()
        self.steps, self.events_trained = (int(v) for v in state["counters"].tolist())
        self._solve(range(self.num_arms))
