"""The REINFORCE core shared by the offline trainer and the online learner: one importance-weighted step.

Owns the arithmetic of the off-policy policy gradient only: log π(a|x, w) of the logged action, the clipped
importance weight ρ = π(a|x, w)/μ (detached: the gradient flows through log π only), the entropy over the
allowed arms, and the surrogate objective ρ·(r − b)·log π(a). Knows nothing about where events, rewards or
baselines come from (simulator, event log, critic), about optimisers or about preference sampling; the
reward itself is ``barp_sidecar.policy.reward``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PolicyGradientTerms:
    """Per-row terms of one batch (all shaped [N])."""

    log_prob_chosen: torch.Tensor  # log π(a|x, w) of the logged action; carries the gradient
    importance_weight: torch.Tensor  # min(π(a|x, w)/μ, max_importance_weight); no gradient
    entropy: torch.Tensor  # H(π(·|x, w)) over the allowed arms; carries the gradient
    probabilities: torch.Tensor  # [N, K] π(·|x, w); carries the gradient
    log_probabilities: torch.Tensor  # [N, K]; carries the gradient


def policy_gradient_terms(
    logits: torch.Tensor,
    action: torch.Tensor,
    propensity: torch.Tensor,
    max_importance_weight: float,
    allowed: torch.Tensor | None = None,
) -> PolicyGradientTerms:
    """Terms for logits [N, K] (masked arms at −inf when ``allowed`` [N, K] is given), logged actions [N]
    and their logged propensities μ [N] (> 0)."""
    log_probabilities = torch.log_softmax(logits, dim=-1)
    probabilities = log_probabilities.exp()
    chosen = log_probabilities.gather(1, action.reshape(-1, 1)).squeeze(1)
    with torch.no_grad():
        weight = torch.clamp(chosen.exp() / propensity, max=max_importance_weight)
    plogp = probabilities * log_probabilities
    if allowed is not None:
        # A masked arm has p = 0 and log p = −inf: its 0·(−inf) = NaN term is zero by definition.
        plogp = torch.where(allowed, plogp, torch.zeros_like(plogp))
    return PolicyGradientTerms(chosen, weight, -plogp.sum(dim=1), probabilities, log_probabilities)


def importance_weighted_objective(terms: PolicyGradientTerms, advantage: torch.Tensor) -> torch.Tensor:
    """Per-row surrogate ρ·A·log π(a) whose gradient is the clipped off-policy REINFORCE estimate; maximise
    its mean. ``advantage`` [N] is r − b for any baseline b that does not depend on the action taken."""
    return terms.importance_weight * advantage * terms.log_prob_chosen
