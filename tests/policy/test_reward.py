import numpy as np
import pytest
import torch

from barp_sidecar.policy.reward import normalized_cost, reward, reward_from_normalized_cost


def test_reward_ends_of_the_simplex():
    assert reward(0.7, 0.001, 1.0, 0.002) == pytest.approx(0.7)
    assert reward(0.7, 0.001, 0.0, 0.002) == pytest.approx(-0.5)


def test_cost_is_capped_at_tau():
    assert normalized_cost(0.01, 0.002) == pytest.approx(1.0)
    assert reward(1.0, 0.01, 0.5, 0.002) == pytest.approx(0.5 - 0.5)


def test_reward_is_linear_in_w_and_broadcasts():
    quality = np.array([1.0, 0.0, 0.5])
    cost = np.array([0.001, 0.0, 0.004])
    w = np.linspace(0, 1, 5)[:, None]
    r = reward(quality, cost, w, 0.002)
    assert r.shape == (5, 3)
    assert np.allclose(np.diff(r, axis=0), np.diff(r, axis=0)[0])  # equal steps: linear in w
    assert (r >= -1).all() and (r <= 1).all()


def test_reward_rejects_non_positive_tau():
    with pytest.raises(ValueError, match="tau_usd"):
        reward(1.0, 0.1, 0.5, 0.0)


def test_formula_on_normalized_costs_matches_reward_for_numpy_and_torch():
    quality = np.array([1.0, 0.0, 0.5, 0.9])
    cost = np.array([0.001, 0.0, 0.004, 0.0005])
    w = np.array([0.2, 0.5, 0.9, 1.0])
    expected = reward(quality, cost, w, 0.002)
    normalized = normalized_cost(cost, 0.002)
    assert np.array_equal(reward_from_normalized_cost(quality, normalized, w), expected)
    w_t = torch.tensor(w, requires_grad=True)
    r_t = reward_from_normalized_cost(torch.tensor(quality), torch.tensor(normalized), w_t)
    assert np.allclose(r_t.detach().numpy(), expected)
    r_t.sum().backward()  # stays differentiable: the gradient in w is q + ĉ
    assert w_t.grad is not None and np.allclose(w_t.grad.numpy(), quality + normalized)
