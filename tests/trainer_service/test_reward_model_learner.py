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
        embedding_dim=DIM, num_models=ARMS, head_layers=0, kind="reward_model", exploration="inverse_gap"
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


@pytest.mark.parametrize(("projection_dim", "shared_ridge_lambda"), [(0, 0.0), (4, 0.0), (4, 1.0)])
def test_learns_the_right_model_per_cluster_for_every_preference(projection_dim, shared_ridge_lambda):
    learner = RewardModelLearner(
        network(),
        RewardModelHyperParameters(
            ridge_lambda=1.0, projection_dim=projection_dim, shared_ridge_lambda=shared_ridge_lambda
        ),
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


@pytest.mark.parametrize("shared_ridge_lambda", [0.0, 300.0])
def test_untried_models_look_good_and_the_scale_grows_with_evidence(shared_ridge_lambda):
    learner = RewardModelLearner(
        network(),
        RewardModelHyperParameters(
            prior_quality=1.0, exploration_scale=10.0, shared_ridge_lambda=shared_ridge_lambda
        ),
    )
    before = float(learner.network.exploration_scale)
    learner.step(clustered_batch(64, 0, uniform_logging=False))  # only arm 0 tried
    with torch.no_grad():
        quality, _ = learner.network.predicted_outcomes(clustered_batch(10, 5).embeddings)
    # Untried: the optimistic prior (plus, with a shared component, the population's slope).
    tolerance = 1e-6 if shared_ridge_lambda == 0 else 0.05
    assert float(quality[:, 1].mean()) == pytest.approx(1.0, abs=tolerance)
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


def difficulty_batch(n: int, seed: int, rare_arm_events: int) -> EventBatch:
    """Quality = a prompt difficulty every model shares (linear in x) + a per-model offset; arm 2 is
    logged only ``rare_arm_events`` times, arms 0 and 1 share the rest."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(7).normal(size=DIM)
    direction /= np.linalg.norm(direction)
    x = rng.normal(size=(n, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    action = rng.integers(0, 2, n)
    action[:rare_arm_events] = 2
    offsets = np.array([0.0, 0.1, 0.2])
    quality = 0.5 + 2.0 * (x @ direction) + offsets[action]
    return EventBatch(
        embeddings=torch.tensor(x, dtype=torch.float32),
        quality_weight=torch.full((n,), 1.0),
        allowed=torch.ones(n, ARMS, dtype=torch.bool),
        action=torch.tensor(action),
        propensity=torch.full((n,), 0.5),
        quality=torch.tensor(quality, dtype=torch.float32),
        normalized_cost=torch.full((n,), 0.1),
    )


def rare_arm_error(shared_ridge_lambda: float) -> float:
    learner = RewardModelLearner(
        network(),
        RewardModelHyperParameters(
            ridge_lambda=3.0, projection_dim=0, shared_ridge_lambda=shared_ridge_lambda
        ),
    )
    learner.step(difficulty_batch(400, 1, rare_arm_events=6))
    test = difficulty_batch(300, 2, rare_arm_events=300)  # every test row on arm 2
    with torch.no_grad():
        quality, _ = learner.network.predicted_outcomes(test.embeddings)
    return float((quality[:, 2] - test.quality).abs().mean())


def test_a_shared_component_lets_a_rarely_tried_model_borrow_the_prompt_difficulty():
    independent = rare_arm_error(0.0)
    shared = rare_arm_error(1.0)
    assert shared < 0.5 * independent, (shared, independent)
    # A huge penalty on the shared slopes switches the shared component off: independent ridges again.
    assert rare_arm_error(1e9) == pytest.approx(independent, abs=1e-4)


def test_the_shared_component_resumes_exactly_from_saved_state():
    hyper = RewardModelHyperParameters(projection_dim=4, shared_ridge_lambda=5.0)
    a = RewardModelLearner(network(), hyper)
    a.step(clustered_batch(64, 1))
    a.step(clustered_batch(64, 2))
    b = RewardModelLearner(network(), hyper)
    b.load_state(a.state())
    assert torch.equal(a.network.reward_head.weight, b.network.reward_head.weight)
