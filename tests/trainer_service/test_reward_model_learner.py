"""The reward-model learner: exact ridge statistics (with and without the PCA projection), optimism,
exploration scale, and the doubly robust estimator the gate uses for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork
from trainer.service.learner import EventBatch, doubly_robust, uniform_network
from trainer.service.reward_model_learner import RewardModelHyperParameters, RewardModelLearner

DIM, ARMS = 16, 3


def network() -> PolicyNetwork:
    architecture = PolicyArchitecture(
        embedding_dim=DIM, num_arms=ARMS, head_layers=0, kind="reward_model", exploration="inverse_gap"
    )
    return uniform_network(PolicyNetwork(architecture))


def clustered_batch(n: int, seed: int, uniform_logging: bool = True) -> EventBatch:
    """Two clusters: arm 0 is right (q = 1) on cluster 0, arm 1 on cluster 1; arm 2 is 0.5 and dear."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(2, DIM))
    cluster = rng.integers(0, 2, n)
    x = centres[cluster] + 0.05 * rng.normal(size=(n, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    action = rng.integers(0, ARMS, n) if uniform_logging else np.zeros(n, dtype=np.int64)
    quality = np.where(action == 2, 0.5, (action == cluster).astype(float))
    cost = np.where(action == 2, 0.8, 0.1)
    return EventBatch(
        embeddings=torch.tensor(x, dtype=torch.float32),
        quality_weight=torch.full((n,), 0.8),
        allowed=torch.ones(n, ARMS, dtype=torch.bool),
        action=torch.tensor(action),
        propensity=torch.full((n,), 1.0 / ARMS if uniform_logging else 1.0),
        quality=torch.tensor(quality, dtype=torch.float32),
        normalized_cost=torch.tensor(cost, dtype=torch.float32),
    )


@pytest.mark.parametrize("projection_dim", [0, 4])
def test_learns_the_right_model_per_cluster_for_every_preference(projection_dim):
    learner = RewardModelLearner(
        network(), RewardModelHyperParameters(ridge_lambda=1.0, projection_dim=projection_dim)
    )
    for seed in range(6):
        learner.step(clustered_batch(64, seed))
    test = clustered_batch(200, 100)
    quality, cost = learner.network.predicted_outcomes(test.embeddings)
    assert quality.shape == (200, ARMS)
    with torch.no_grad():
        for w in (0.5, 0.8, 1.0):
            greedy = learner.network(test.embeddings, torch.full((200,), w)).argmax(dim=1)
            best_cheap = (
                test.embeddings
                @ torch.tensor(np.random.default_rng(99).normal(size=(2, DIM)).T, dtype=torch.float32)
            ).argmax(dim=1)
            assert (greedy == best_cheap).float().mean() > 0.95
    assert float(cost[:, 2].mean().detach()) == pytest.approx(0.8, abs=0.05)


def test_same_events_same_weights_and_replays_are_ignored():
    a = RewardModelLearner(network(), RewardModelHyperParameters(projection_dim=4))
    b = RewardModelLearner(network(), RewardModelHyperParameters(projection_dim=4))
    batch = clustered_batch(64, 1)
    a.step(batch)
    b.step(batch)
    b.step(batch, replayed=True)  # already counted: must not change the statistics
    assert torch.equal(a.network.reward_head.weight, b.network.reward_head.weight)
    assert a.events_trained == b.events_trained == 64


def test_untried_models_look_good_and_the_scale_grows_with_evidence():
    learner = RewardModelLearner(
        network(), RewardModelHyperParameters(prior_quality=1.0, exploration_scale=10.0)
    )
    before = float(learner.network.exploration_scale)
    learner.step(clustered_batch(64, 0, uniform_logging=False))  # only arm 0 tried
    with torch.no_grad():
        quality, _ = learner.network.predicted_outcomes(clustered_batch(10, 5).embeddings)
    assert float(quality[:, 1].mean()) == pytest.approx(1.0, abs=1e-6)  # untried: the optimistic prior
    assert float(quality[:, 0].mean()) < 0.8
    assert float(learner.network.exploration_scale) > before


def test_doubly_robust_is_unbiased_whatever_the_critic():
    batch = clustered_batch(3000, 7)
    learner = RewardModelLearner(network(), RewardModelHyperParameters(ridge_lambda=0.1))
    for seed in range(10):
        learner.step(clustered_batch(64, 20 + seed))
    target = learner.network
    with torch.no_grad():
        probs = target.probabilities(batch.embeddings, batch.quality_weight).double()
    # True reward of every arm for every event (the data is deterministic given the cluster).
    centres = torch.tensor(np.random.default_rng(99).normal(size=(2, DIM)), dtype=torch.float32)
    cluster = (batch.embeddings @ centres.T).argmax(dim=1)
    quality = torch.stack(
        [(cluster == 0).double(), (cluster == 1).double(), torch.full_like(cluster, 0.5).double()], 1
    )
    cost = torch.tensor([0.1, 0.1, 0.8], dtype=torch.float64)
    truth = float((probs * (0.8 * quality - 0.2 * cost)).sum(dim=1).mean())
    with_learned_critic = doubly_robust(target, batch, critic=target)
    with_useless_critic = doubly_robust(target, batch, critic=network())  # predicts 0 for everything
    rho = probs.gather(1, batch.action.reshape(-1, 1)).squeeze(1) / batch.propensity.double()
    ips = float((rho * batch.rewards(batch.quality_weight).double()).mean())
    assert with_useless_critic.value == pytest.approx(ips, abs=1e-9)  # DR with a zero critic is plain IPS
    assert with_learned_critic.value == pytest.approx(truth, abs=0.01)
    assert with_learned_critic.ci_low <= truth + 0.01 and truth - 0.01 <= with_learned_critic.ci_high
    assert with_learned_critic.events == 3000
