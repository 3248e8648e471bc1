"""Online importance-weighted REINFORCE with preference augmentation, and the SNIPS estimator (DESIGN §6).

Owns the update rule and off-policy evaluation; knows nothing about files, gRPC or scheduling (the
training loop feeds it events from the log). Deterministic under a seed for a given event order: the
only randomness (the augmented preferences) comes from a seeded ``torch.Generator``.

Update, for a batch of logged events (x, w, allowed, a, μ, q, c):
    for each event, the logged w plus ``augment_preferences`` preferences w' ~ U(0, 1):
        r'   = w'·q − (1 − w')·min(c/τ, 1)          (the reward is linear in w given (q, c))
        ρ    = min(π(a|x,w') / μ, max_importance_weight)   (detached; μ = logged propensity at w)
    b(x, w') = w'·q̂(x) − (1 − w')·ĉ(x)                (a learned per-prompt baseline, detached)
    loss = −mean(ρ·(r' − b)·log π(a|x,w')) − β·mean(H(π(·|x,w')))
The terms (ρ, log π(a), H) are ``trainer.reinforce_core``'s, the rewards ``barp_sidecar.policy.reward``'s.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from barp_sidecar.gen.barp.v1 import trainer_pb2
from barp_sidecar.policy.network import PolicyNetwork
from barp_sidecar.policy.reward import normalized_cost, reward_from_normalized_cost
from trainer.reinforce_core import importance_weighted_objective, policy_gradient_terms


@dataclass(frozen=True)
class EventBatch:
    """Tensors for a batch of logged events, in the policy's arm order."""

    embeddings: torch.Tensor  # [N, D] float32
    quality_weight: torch.Tensor  # [N]
    allowed: torch.Tensor  # [N, K] bool
    action: torch.Tensor  # [N] long
    propensity: torch.Tensor  # [N]
    quality: torch.Tensor  # [N]
    normalized_cost: torch.Tensor  # [N] min(c/τ, 1)

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def rewards(self, quality_weight: torch.Tensor) -> torch.Tensor:
        return reward_from_normalized_cost(self.quality, self.normalized_cost, quality_weight)


class CostImputer:
    """Cost for events that arrive without one: the running mean cost of that arm, else 0."""

    def __init__(self, num_arms: int) -> None:
        self.total_usd = np.zeros(num_arms)
        self.count = np.zeros(num_arms)

    def observe(self, arm: int, cost_usd: float) -> None:
        self.total_usd[arm] += cost_usd
        self.count[arm] += 1

    def reindexed(self, old_arms: tuple[str, ...], new_arms: tuple[str, ...]) -> CostImputer:
        """The same running means mapped by model name onto ``new_arms`` (new models start empty)."""
        imputer = CostImputer(len(new_arms))
        for index, name in enumerate(new_arms):
            if name in old_arms:
                imputer.total_usd[index] = self.total_usd[old_arms.index(name)]
                imputer.count[index] = self.count[old_arms.index(name)]
        return imputer

    def estimate(self, arm: int) -> float:
        return float(self.total_usd[arm] / self.count[arm]) if self.count[arm] else 0.0


def is_holdout(event_id: str, every: int) -> bool:
    """Deterministic held-out split by event id (independent of arrival order and restarts)."""
    return zlib.crc32(event_id.encode()) % every == 0


def to_batch(
    events: Sequence[trainer_pb2.RewardEvent],
    arms: tuple[str, ...],
    tau_usd: float,
    imputer: CostImputer,
    observe_costs: bool = True,
    decided_with: Callable[[int], tuple[str, ...]] | None = None,
) -> EventBatch:
    """Convert validated events (every event's arm in ``arms``); updates the imputer with every known cost
    (in order) unless replaying. ``decided_with(policy_version)``: the arm list an event's ``allowed`` mask
    refers to when the pool changed since (mapped by name; an arm that version did not have counts as
    allowed only when the event allowed every arm)."""
    index = {name: i for i, name in enumerate(arms)}
    n, k = len(events), len(arms)
    embeddings = np.empty((n, len(events[0].embedding) if n else 0), dtype=np.float32)
    allowed = np.ones((n, k), dtype=bool)
    action = np.empty(n, dtype=np.int64)
    cost = np.empty(n, dtype=np.float64)
    for i, event in enumerate(events):
        embeddings[i] = event.embedding
        if event.allowed:
            logged = arms if decided_with is None else decided_with(event.policy_version)
            if logged == arms:
                allowed[i] = event.allowed
            else:
                by_name = dict(zip(logged, event.allowed, strict=False))
                allowed[i] = [by_name.get(name, all(event.allowed)) for name in arms]
        action[i] = index[event.model]
        if event.HasField("cost_usd"):
            if observe_costs:
                imputer.observe(int(action[i]), event.cost_usd)
            cost[i] = event.cost_usd
        else:
            cost[i] = imputer.estimate(int(action[i]))
    return EventBatch(
        embeddings=torch.from_numpy(embeddings),
        quality_weight=torch.tensor([e.quality_weight for e in events], dtype=torch.float32),
        allowed=torch.from_numpy(allowed),
        action=torch.from_numpy(action),
        propensity=torch.tensor([e.propensity for e in events], dtype=torch.float32),
        quality=torch.tensor([e.quality for e in events], dtype=torch.float32),
        normalized_cost=torch.from_numpy(normalized_cost(cost, tau_usd).astype(np.float32)),
    )


@dataclass(frozen=True)
class LearnerHyperParameters:
    learning_rate: float = 1e-3
    entropy_coef: float = 0.01
    max_importance_weight: float = 5.0
    augment_preferences: int = 4
    max_grad_norm: float = 1.0
    logit_l2: float = 0.0


class OnlineLearner:
    """Owns a trainable copy of the policy network and its optimiser."""

    # Off-policy steps on replayed events help a gradient learner (each event is worth several steps).
    uses_replay = True

    def __init__(self, network: PolicyNetwork, hyper: LearnerHyperParameters, seed: int) -> None:
        self.network = network
        self.network.train()
        for parameter in self.network.parameters():
            parameter.requires_grad_(True)
        self.hyper = hyper
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=hyper.learning_rate)
        # Per-prompt baseline (a critic kept only in the trainer): predicts the expected quality and
        # normalised cost at x, so b(x, w') = w'·q̂(x) − (1 − w')·ĉ(x). Prompts whose every answer is poor
        # (a hard task) then no longer look like evidence against whichever model was logged.
        dim = network.architecture.embedding_dim
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.baseline = torch.nn.Sequential(
                torch.nn.Linear(dim, 64), torch.nn.GELU(), torch.nn.Linear(64, 2)
            )
        self.baseline_optimizer = torch.optim.Adam(self.baseline.parameters(), lr=1e-2)
        self.steps = 0
        self.events_trained = 0

    def state(self) -> dict[str, Any]:
        """Optimiser moments, the baseline critic and its optimiser, the augmentation RNG, counters."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "baseline": dict(self.baseline.state_dict()),
            "baseline_optimizer": self.baseline_optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "counters": [self.steps, self.events_trained],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline.load_state_dict(state["baseline"])
        self.baseline_optimizer.load_state_dict(state["baseline_optimizer"])
        self.generator.set_state(state["generator"])
        self.steps, self.events_trained = (int(v) for v in state["counters"])

    def step(self, batch: EventBatch, replayed: bool = False) -> dict[str, float]:
        """One gradient step on ``batch`` (``replayed``: already counted once); returns diagnostics."""
        n = len(batch)
        m = 1 + self.hyper.augment_preferences
        extra = torch.rand((n, m - 1), generator=self.generator)
        prefs = torch.cat([batch.quality_weight.reshape(-1, 1), extra], dim=1).reshape(-1)
        rep = lambda t: t.repeat_interleave(m, dim=0)  # noqa: E731 - local shorthand
        embeddings, allowed, action = rep(batch.embeddings), rep(batch.allowed), rep(batch.action)
        propensity = rep(batch.propensity)
        quality, cost = rep(batch.quality), rep(batch.normalized_cost)
        rewards = reward_from_normalized_cost(quality, cost, prefs)

        logits = self.network(embeddings, prefs, allowed)
        terms = policy_gradient_terms(logits, action, propensity, self.hyper.max_importance_weight, allowed)
        predicted = self.baseline(batch.embeddings)
        with torch.no_grad():
            # Linear in w' like the reward, so one event's copies at different w' each get a fitting one.
            expected = rep(predicted.detach())
            baseline = reward_from_normalized_cost(expected[:, 0], expected[:, 1], prefs)
        weights, entropy = terms.importance_weight, terms.entropy
        policy_loss = -importance_weighted_objective(terms, rewards - baseline).mean()
        # An optional L2 penalty on the allowed logits keeps the softmax out of saturation, where the
        # importance weights π/μ of every other arm vanish and learning stops (seen in the demo without it).
        finite = torch.where(allowed, logits, torch.zeros_like(logits))
        logit_penalty = finite.pow(2).sum(dim=1).mean()
        loss = policy_loss - self.hyper.entropy_coef * entropy.mean() + self.hyper.logit_l2 * logit_penalty
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Bounded steps: a burst of lopsided events must not saturate the softmax (a saturated policy
        # gets ~zero importance weight for every other arm and stops learning).
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.hyper.max_grad_norm)
        self.optimizer.step()
        targets = torch.stack([batch.quality, batch.normalized_cost], dim=1)
        baseline_loss = torch.nn.functional.mse_loss(predicted, targets)
        self.baseline_optimizer.zero_grad(set_to_none=True)
        baseline_loss.backward()
        self.baseline_optimizer.step()
        self.steps += 1
        if not replayed:
            self.events_trained += n
        return {
            "loss": float(loss.detach()),
            "mean_importance_weight": float(weights.mean()),
            "entropy": float(entropy.mean().detach()),
        }


@dataclass(frozen=True)
class Estimate:
    """Self-normalised IPS estimate of a policy's mean reward, with a 95% confidence interval."""

    value: float
    ci_low: float
    ci_high: float
    events: int
    effective_sample_size: float

    def to_json(self) -> dict[str, float]:
        return {
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "events": self.events,
            "effective_sample_size": self.effective_sample_size,
        }


@torch.inference_mode()
def snips(network: PolicyNetwork, batch: EventBatch) -> Estimate:
    """SNIPS of the stochastic policy π on logged events (rewards at each event's logged w).

    V = Σρr/Σρ with ρ = π(a|x,w)/μ; standard error by the delta method sqrt(Σρ²(r−V)²)/Σρ.
    """
    was_training = network.training
    network.eval()
    try:
        probs = network.probabilities(batch.embeddings, batch.quality_weight, batch.allowed)
    finally:
        network.train(was_training)
    pi = probs.gather(1, batch.action.reshape(-1, 1)).squeeze(1).double()
    rho = pi / batch.propensity.double()
    rewards = batch.rewards(batch.quality_weight).double()
    total = float(rho.sum())
    if total <= 0:
        return Estimate(float("nan"), float("nan"), float("nan"), len(batch), 0.0)
    value = float((rho * rewards).sum()) / total
    se = math.sqrt(float((rho.pow(2) * (rewards - value).pow(2)).sum())) / total
    ess = total**2 / float(rho.pow(2).sum())
    return Estimate(value, value - 1.96 * se, value + 1.96 * se, len(batch), ess)


@torch.inference_mode()
def doubly_robust(network: PolicyNetwork, batch: EventBatch, critic: PolicyNetwork) -> Estimate:
    """Doubly robust estimate of the stochastic policy π on logged events, with ``critic`` (a
    ``reward_model`` network) predicting r̂(x, a) at each event's logged w:

        V = mean_i [ Σ_a π(a|x_i,w_i)·r̂_a + (π(a_i|x_i,w_i) / μ_i)·(r_i − r̂_{a_i}) ]

    Unbiased for any critic when μ is the true logging propensity; with a good critic its variance is far
    below SNIPS' (the correction term carries only the critic's residual), which keeps a sharp candidate
    from being rejected on noise. Standard error: sample standard deviation of the terms / √n.
    """
    was_training = network.training
    network.eval()
    try:
        probs = network.probabilities(batch.embeddings, batch.quality_weight, batch.allowed).double()
        quality, cost = critic.predicted_outcomes(batch.embeddings)
    finally:
        network.train(was_training)
    w = batch.quality_weight.double().reshape(-1, 1)
    predicted = reward_from_normalized_cost(quality.double(), cost.double(), w)
    predicted = torch.where(batch.allowed, predicted, torch.zeros_like(predicted))
    rewards = batch.rewards(batch.quality_weight).double()
    chosen = batch.action.reshape(-1, 1)
    rho = probs.gather(1, chosen).squeeze(1) / batch.propensity.double()
    terms = (probs * predicted).sum(dim=1) + rho * (rewards - predicted.gather(1, chosen).squeeze(1))
    n = len(batch)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, 0.0)
    value = float(terms.mean())
    se = float(terms.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("inf")
    ess = float(rho.sum()) ** 2 / max(float(rho.pow(2).sum()), 1e-300)
    return Estimate(value, value - 1.96 * se, value + 1.96 * se, n, ess)


def uniform_network(network: PolicyNetwork) -> PolicyNetwork:
    """Zero the output layer so π is exactly uniform over allowed arms (a cold start)."""
    with torch.no_grad():
        head = network.reward_head if network.architecture.kind == "reward_model" else network.output
        head.weight.zero_()
        head.bias.zero_()
    return network
