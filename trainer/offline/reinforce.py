"""Offline BaRP training: REINFORCE on simulated bandit feedback (the paper's method, plus measured fixes).

Owns the training loop; reads embeddings (precomputed), asks ``BanditSimulator`` for the chosen arm's
(q, c) only, and returns a trained ``PolicyNetwork``. Knows nothing about files, encoders or reports.

Each step: draw B prompts and B preferences w_q, sample an arm from the behaviour policy μ (the current
policy mixed with ε·uniform, so every arm keeps support), reveal that arm's (q, c), then update. The
importance-weighted gradient terms come from ``trainer.reinforce_core`` (shared with the online learner).

- ``baseline="batch_mean"`` is vanilla BaRP: ∇ = (r − mean r)·∇log π(a|x,w) + β·∇H.
- ``baseline="critic"`` learns, from the revealed (q, c) only, a per-arm model q̂(x,a), ĉ(x,a) and uses
  the doubly-robust gradient Σ_a π(a)·r̂_a(w) + ρ·(r − r̂_a(w))·log π(a) (ρ = π/μ, detached, clipped):
  unbiased like REINFORCE, far lower variance; the critic is the preference-conditioned baseline, exact in
  w because r is linear in w given (q, c).
- ``augment_preferences=M`` reuses every event at M more preferences w' (DESIGN §6): the revealed (q, c)
  gives r(w') exactly; the term is importance-weighted by π(a|x,w')/μ(a|x,w), clipped.

Deterministic under ``seed`` on CPU (torch and numpy generators are seeded, one thread order).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork
from barp_sidecar.policy.reward import normalized_cost, reward_from_normalized_cost
from trainer.offline.preferences import sample_quality_weights
from trainer.offline.simulator import BanditSimulator
from trainer.reinforce_core import importance_weighted_objective, policy_gradient_terms

BASELINES = ("batch_mean", "critic")


@dataclass(frozen=True)
class OfflineTrainingConfig:
    """Hyper-parameters of one offline run; stored in the checkpoint manifest."""

    steps: int = 1500
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    entropy_start: float = 0.02
    entropy_end: float = 0.0
    # Behaviour policy = (1 − ε)·π + ε·uniform: keeps every arm explored and the propensities bounded.
    exploration_epsilon: float = 0.05
    # ε starts here and decays linearly to exploration_epsilon over the first half of training, so the
    # critic sees every arm (a costly arm the initial policy dislikes is otherwise never discovered).
    exploration_epsilon_start: float = 0.5
    # Weight the critic's regression by 1/μ (clipped, normalised): unbiased for all arms, not just liked ones.
    critic_importance_weighting: bool = True
    baseline: str = "critic"
    preference_sampling: str = "ends"
    augment_preferences: int = 2
    importance_clip: float = 5.0
    conditioning: str = "film"
    head_hidden: int = 256
    head_layers: int = 2
    dropout: float = 0.1
    critic_hidden: int = 256
    critic_learning_rate: float = 1e-3
    critic_weight_decay: float = 1e-4
    # Scale of the doubly-robust correction term (1 = unbiased DR; 0 = pure direct method on the critic).
    correction_weight: float = 1.0
    # How the critic's r̂ enters: "expectation" = Σ_a π(a)·r̂_a (DR; its gradient vanishes for arms π has
    # already abandoned), "kl" = −KL(softmax(r̂/T) ‖ π), a policy-improvement target whose gradient π − π*
    # does not vanish, so an arm the critic later finds good (the costly, best one) can still be adopted.
    direct_term: str = "kl"
    critic_temperature: float = 0.02
    # Gaussian noise added to the (unit-norm) training embeddings: keeps π from memorising single prompts.
    input_noise_std: float = 0.02
    # Extra Gaussian noise on the critic's inputs only (shrinks q̂, ĉ toward neighbourhood / task means).
    critic_input_noise_std: float = 0.0
    # Polyak (EMA) averaging of the policy weights; 0 = off. The shipped network is the average.
    policy_ema_decay: float = 0.0
    # Polyak (EMA) averaging of the critic; when > 0 the policy's targets r̂ come from the averaged critic.
    critic_ema_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.direct_term not in ("expectation", "kl"):
            raise ValueError(f"direct_term must be 'expectation' or 'kl', not {self.direct_term!r}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, not {self.baseline!r}")
        if self.steps < 1 or self.batch_size < 1 or self.augment_preferences < 0:
            raise ValueError("steps and batch_size must be positive, augment_preferences non-negative")
        if not (0.0 <= self.exploration_epsilon < 1.0 and 0.0 <= self.exploration_epsilon_start < 1.0):
            raise ValueError("exploration_epsilon and exploration_epsilon_start must be in [0, 1)")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class ArmOutcomeCritic(nn.Module):
    """q̂(x, a) ∈ (0, 1) (sigmoid) and log ĉ(x, a) per arm, fitted on revealed outcomes only."""

    def __init__(self, embedding_dim: int, num_arms: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(embedding_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
        )
        self.quality_logit = nn.Linear(hidden, num_arms)
        self.log_cost = nn.Linear(hidden, num_arms)

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(embeddings)
        return self.quality_logit(h), self.log_cost(h)


def _entropy_coefficient(config: OfflineTrainingConfig, step: int) -> float:
    fraction = step / max(1, config.steps - 1)
    return config.entropy_start + (config.entropy_end - config.entropy_start) * fraction


def train_offline(
    embeddings: np.ndarray,
    simulator: BanditSimulator,
    tau_usd: float,
    config: OfflineTrainingConfig,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> PolicyNetwork:
    """Train π on bandit feedback from ``simulator`` over the rows of ``embeddings`` [N, D]."""
    if embeddings.shape[0] != simulator.num_rows:
        raise ValueError("embeddings and simulator must have the same rows")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    n, dim = embeddings.shape
    k = simulator.num_arms
    x_all = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    architecture = PolicyArchitecture(
        embedding_dim=dim,
        num_models=k,
        head_hidden=config.head_hidden,
        head_layers=config.head_layers,
        dropout=config.dropout,
        conditioning=config.conditioning,
    )
    policy = PolicyNetwork(architecture)
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.steps, eta_min=0.1 * config.learning_rate
    )
    critic = None
    critic_optimizer = None
    if config.baseline == "critic":
        critic = ArmOutcomeCritic(dim, k, config.critic_hidden, config.dropout)
        critic_optimizer = torch.optim.AdamW(
            critic.parameters(), lr=config.critic_learning_rate, weight_decay=config.critic_weight_decay
        )
    ema_policy = None
    if config.policy_ema_decay > 0:
        ema_policy = torch.optim.swa_utils.AveragedModel(
            policy, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.policy_ema_decay)
        )
    ema_critic = None
    if critic is not None and config.critic_ema_decay > 0:
        ema_critic = torch.optim.swa_utils.AveragedModel(
            critic, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.critic_ema_decay)
        )
    log_tau = math.log(tau_usd)
    arange = torch.arange(config.batch_size)
    # Rows from sources that lack some arms: only observed arms may be chosen, so π and μ are masked.
    observed_all = None if simulator.fully_observed else torch.as_tensor(simulator.observed)

    for step in range(config.steps):
        rows = rng.integers(0, n, config.batch_size)
        w = torch.as_tensor(
            sample_quality_weights(rng, config.batch_size, config.preference_sampling), dtype=torch.float32
        )
        x = x_all[rows]
        if config.input_noise_std > 0:
            x = x + config.input_noise_std * torch.randn_like(x)
        policy.train()
        decay = min(1.0, step / max(1.0, 0.5 * config.steps))
        epsilon = (
            config.exploration_epsilon_start
            + (config.exploration_epsilon - config.exploration_epsilon_start) * decay
        )
        allowed = None if observed_all is None else observed_all[rows]
        with torch.no_grad():
            if allowed is None:
                behaviour = (1.0 - epsilon) * policy.probabilities(x, w) + epsilon / k
            else:
                uniform = allowed.float() / allowed.sum(dim=1, keepdim=True)
                behaviour = (1.0 - epsilon) * policy.probabilities(x, w, allowed) + epsilon * uniform
        arms = torch.multinomial(behaviour, 1, generator=None).squeeze(1)
        propensity = behaviour[arange, arms]
        quality_np, cost_np = simulator.reveal(rows, arms.numpy())
        quality = torch.as_tensor(quality_np, dtype=torch.float32)
        cost_norm = torch.as_tensor(normalized_cost(cost_np, tau_usd), dtype=torch.float32)

        q_hat = c_hat = None
        if critic is not None and critic_optimizer is not None:
            critic.train()
            x_critic = x
            if config.critic_input_noise_std > 0:
                x_critic = x + config.critic_input_noise_std * torch.randn_like(x)
            q_logit, log_c = critic(x_critic)
            if config.critic_importance_weighting:
                sample_weight = torch.clamp(1.0 / (k * propensity), max=config.importance_clip)
                sample_weight = sample_weight / sample_weight.mean()
            else:
                sample_weight = torch.ones_like(propensity)
            quality_loss = nn.functional.binary_cross_entropy_with_logits(
                q_logit[arange, arms], quality, reduction="none"
            )
            log_cost_target = torch.as_tensor(np.log(np.maximum(cost_np, 1e-9)), dtype=torch.float32)
            cost_loss = (log_c[arange, arms] - log_cost_target) ** 2
            critic_loss = (sample_weight * (quality_loss + cost_loss)).mean()
            critic_optimizer.zero_grad()
            critic_loss.backward()
            critic_optimizer.step()
            critic.eval()
            target_critic: nn.Module = critic
            if ema_critic is not None:
                ema_critic.update_parameters(critic)
                ema_critic.eval()
                target_critic = ema_critic
            with torch.no_grad():
                q_logit, log_c = target_critic(x)
                q_hat = torch.sigmoid(q_logit)
                c_hat = torch.clamp(torch.exp(log_c - log_tau), max=1.0)

        # Preferences to learn at: the sampled one plus M re-used ones (same event, exact reward).
        prefs = [w] + [
            torch.as_tensor(
                sample_quality_weights(rng, config.batch_size, config.preference_sampling),
                dtype=torch.float32,
            )
            for _ in range(config.augment_preferences)
        ]
        w_all = torch.cat(prefs)
        reps = len(prefs)
        x_rep = x.repeat(reps, 1)
        a_rep = arms.repeat(reps)
        mu_rep = propensity.repeat(reps)
        r_rep = reward_from_normalized_cost(quality.repeat(reps), cost_norm.repeat(reps), w_all)
        allowed_rep = None if allowed is None else allowed.repeat(reps, 1)
        terms = policy_gradient_terms(
            policy(x_rep, w_all, allowed_rep), a_rep, mu_rep, config.importance_clip, allowed_rep
        )
        log_probs, probs, entropy = terms.log_probabilities, terms.probabilities, terms.entropy
        # Masked arms have log π = −inf and π = 0: use 0 for them wherever log π is multiplied.
        finite_log_probs = log_probs if allowed_rep is None else log_probs.masked_fill(~allowed_rep, 0.0)
        idx = torch.arange(x_rep.shape[0])
        if q_hat is not None and c_hat is not None:
            r_hat = reward_from_normalized_cost(q_hat.repeat(reps, 1), c_hat.repeat(reps, 1), w_all[:, None])
            if config.direct_term == "kl":
                scores = r_hat / config.critic_temperature
                if allowed_rep is not None:
                    scores = scores.masked_fill(~allowed_rep, float("-inf"))
                target = torch.softmax(scores, dim=1)
                direct = (target * finite_log_probs).sum(dim=1)  # −KL(target ‖ π) up to a constant
            else:
                direct = (probs * r_hat).sum(dim=1)
            correction = importance_weighted_objective(terms, r_rep - r_hat[idx, a_rep])
            objective = direct + config.correction_weight * correction
        else:
            advantage = torch.cat([r - r.mean() for r in r_rep.chunk(reps)])
            objective = importance_weighted_objective(terms, advantage)
        beta = _entropy_coefficient(config, step)
        loss = -(objective + beta * entropy).mean()
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if ema_policy is not None:
            ema_policy.update_parameters(policy)
        if progress is not None:
            progress(
                step,
                {
                    "reward": float(r_rep[: config.batch_size].mean()),
                    "entropy": float(entropy.detach().mean()),
                },
            )
    if ema_policy is not None:
        policy.load_state_dict(ema_policy.module.state_dict())
    policy.eval()
    return policy


def greedy_actions(policy: PolicyNetwork, embeddings: np.ndarray, quality_weight: float) -> np.ndarray:
    """argmax_a π(a|x, w_q) per row (test-time decisions are greedy)."""
    policy.eval()
    x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    with torch.inference_mode():
        logits = policy(x, torch.full((x.shape[0],), float(quality_weight)))
    return logits.argmax(dim=1).numpy()
