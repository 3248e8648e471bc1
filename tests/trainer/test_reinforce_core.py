"""The shared REINFORCE core: clipped importance weights, masked entropy, the surrogate's gradient."""

from __future__ import annotations

import math

import torch

from trainer.reinforce_core import importance_weighted_objective, policy_gradient_terms


def test_weights_are_pi_over_mu_clipped_and_carry_no_gradient() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], requires_grad=True)
    terms = policy_gradient_terms(logits, torch.tensor([0, 0]), torch.tensor([0.25, 0.1]), 5.0)
    assert torch.allclose(terms.importance_weight, torch.tensor([2.0, 5.0]))  # 0.5/0.25; 0.75/0.1 → clip 5
    assert not terms.importance_weight.requires_grad
    assert torch.allclose(terms.log_prob_chosen, torch.log(torch.tensor([0.5, 0.75])))


def test_surrogate_gradient_is_weight_times_advantage_times_score() -> None:
    logits = torch.tensor([[0.2, -0.1, 0.4]], requires_grad=True)
    terms = policy_gradient_terms(logits, torch.tensor([2]), torch.tensor([0.5]), 10.0)
    importance_weighted_objective(terms, torch.tensor([0.3])).sum().backward()
    pi = torch.softmax(logits.detach(), dim=-1)[0]
    score = torch.nn.functional.one_hot(torch.tensor(2), 3).float() - pi  # ∇ log π(a) w.r.t. the logits
    assert logits.grad is not None
    assert torch.allclose(logits.grad[0], (pi[2] / 0.5) * 0.3 * score)


def test_entropy_ignores_masked_arms_and_stays_finite() -> None:
    logits = torch.tensor([[0.0, 0.0, float("-inf")]])
    allowed = torch.tensor([[True, True, False]])
    terms = policy_gradient_terms(logits, torch.tensor([1]), torch.tensor([0.5]), 5.0, allowed)
    assert torch.allclose(terms.entropy, torch.tensor([math.log(2.0)]))
    unmasked = policy_gradient_terms(logits, torch.tensor([1]), torch.tensor([0.5]), 5.0)
    assert torch.isnan(unmasked.entropy).all()  # why the mask is needed
