"""The reward-model learner's optimism by region: centroids fitted once on the warm-up events, events
counted per (region, model), the bonus b[c, a] = exploration_bonus/√(1 + n[c, a]) written into the network,
exact resume from saved state (mid-warm-up too) and pool changes keeping the counts by name."""

from __future__ import annotations

import math

import numpy as np
import torch

from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork
from tests.trainer_service.test_reward_model_learner import ARMS, DIM, clustered_batch
from trainer.service.learner import EventBatch, uniform_network
from trainer.service.policy_source import cold_policy
from trainer.service.reward_model_learner import RewardModelHyperParameters, RewardModelLearner
from trainer.service.settings import LearnerSettings

HYPER = RewardModelHyperParameters(
    projection_dim=4, exploration_scale=10.0, exploration_bonus=0.5, region_warmup_events=64
)


def regional_network(regions: int = 2, intercepts: bool = False) -> PolicyNetwork:
    architecture = PolicyArchitecture(
        embedding_dim=DIM,
        num_models=ARMS,
        head_layers=0,
        kind="reward_model",
        exploration="inverse_gap",
        exploration_regions=regions,
        region_intercepts=intercepts,
    )
    return uniform_network(PolicyNetwork(architecture))


def cluster_of(batch: EventBatch) -> torch.Tensor:
    """The true cluster of each row (clustered_batch's construction)."""
    centres = torch.tensor(np.random.default_rng(99).normal(size=(2, DIM)), dtype=torch.float32)
    return (batch.embeddings @ centres.T).argmax(dim=1)


def only(batch: EventBatch, rows: torch.Tensor) -> EventBatch:
    return EventBatch(**{name: getattr(batch, name)[rows] for name in batch.__dataclass_fields__})


def test_regions_follow_the_clusters_and_count_each_models_events_there():
    learner = RewardModelLearner(regional_network(), HYPER)
    warmup = clustered_batch(64, 0)
    learner.step(warmup)
    assert learner.regions.fitted
    later = clustered_batch(200, 1)
    learner.step(later)
    every = torch.cat([warmup.embeddings, later.embeddings])
    truth = torch.cat([cluster_of(warmup), cluster_of(later)])
    regions = learner.network.exploration_region(every)
    # The two regions are the two clusters (in some order).
    assert bool((regions == truth).all()) or bool((regions == 1 - truth).all())
    actions = torch.cat([warmup.action, later.action])
    for region in range(2):
        for arm in range(ARMS):
            expected = int(((regions == region) & (actions == arm)).sum())
            assert int(learner.regions.counts[region, arm]) == expected
            bonus = float(learner.network.exploration_bonus[region, arm])
            assert math.isclose(bonus, 0.5 / math.sqrt(1 + expected), rel_tol=1e-6)


def test_a_model_rarely_tried_in_one_region_is_explored_more_there():
    learner = RewardModelLearner(regional_network(), HYPER)
    batch = clustered_batch(600, 3)
    clusters = cluster_of(batch)
    # Arm 2 is logged only on cluster 0 (never on cluster 1); arms 0 and 1 everywhere.
    keep = (batch.action != 2) | (clusters == 0)
    learner.step(only(batch, keep))
    region_of_cluster = learner.network.exploration_region(batch.embeddings[clusters == 0][:1])
    tried, untried = int(region_of_cluster), 1 - int(region_of_cluster)
    assert int(learner.regions.counts[untried, 2]) == 0 < int(learner.regions.counts[tried, 2])
    bonus = learner.network.exploration_bonus
    assert float(bonus[untried, 2]) == 0.5 > float(bonus[tried, 2])
    # On cluster-1 prompts arm 2 (0.5 quality, dear) keeps a larger share than on cluster-0 prompts.
    with torch.no_grad():
        probs = learner.network.probabilities(batch.embeddings, torch.full((len(batch),), 0.8))
    assert float(probs[clusters == 1, 2].mean()) > 2 * float(probs[clusters == 0, 2].mean())


def test_before_the_warm_up_every_region_uses_the_models_overall_count():
    learner = RewardModelLearner(regional_network(), HYPER)
    learner.step(clustered_batch(20, 0))
    assert not learner.regions.fitted
    expected = (0.5 / torch.sqrt(1.0 + learner.arm_events.double())).float()
    assert torch.allclose(learner.network.exploration_bonus, expected.expand(2, -1))


def test_resumes_exactly_mid_warm_up_and_after_it():
    a = RewardModelLearner(regional_network(), HYPER)
    a.step(clustered_batch(40, 0))  # still warming up
    b = RewardModelLearner(regional_network(), HYPER)
    b.load_state(a.state())
    for learner in (a, b):
        learner.step(clustered_batch(40, 1))  # fits the regions
        learner.step(clustered_batch(40, 2))
    c = RewardModelLearner(regional_network(), HYPER)
    c.load_state(b.state())
    for name in ("exploration_scale", "exploration_bonus", "exploration_centroids"):
        assert torch.equal(getattr(a.network, name), getattr(b.network, name))
        assert torch.equal(getattr(a.network, name), getattr(c.network, name))
    assert torch.equal(a.regions.counts, c.regions.counts)


def test_state_without_the_region_keys_is_refused():
    learner = RewardModelLearner(regional_network(), HYPER)
    state = learner.state()
    del state["region_counts"]
    try:
        RewardModelLearner(regional_network(), HYPER).load_state(state)
    except ValueError as exc:
        assert "region_counts" in str(exc)
    else:
        raise AssertionError("a state without region counts must be refused")


def test_a_pool_change_keeps_the_counts_by_name_and_a_new_model_starts_at_zero():
    learner = RewardModelLearner(regional_network(), HYPER)
    learner.step(clustered_batch(200, 0))
    before = learner.regions.counts.clone()
    learner.reindex(("a", "b", "c"), ("c", "a", "new"))
    assert torch.equal(learner.regions.counts[:, 0], before[:, 2])
    assert torch.equal(learner.regions.counts[:, 1], before[:, 0])
    assert int(learner.regions.counts[:, 2].sum()) == 0
    assert tuple(learner.network.exploration_bonus.shape) == (2, 3)
    assert float(learner.network.exploration_bonus[:, 2].min()) == 0.5


def test_a_cold_start_policy_has_the_configured_regions_and_a_boltzmann_one_none():
    base = LearnerSettings(arms=("a", "b"), tau_usd=0.01, encoder_dim=DIM, exploration_regions=4)
    assert cold_policy(base).manifest.architecture.exploration_regions == 4
    boltzmann = LearnerSettings(**{**base.__dict__, "exploration_shape": "boltzmann"})
    assert cold_policy(boltzmann).manifest.architecture.exploration_regions == 0
