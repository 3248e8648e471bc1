"""Per-(region, model) intercepts of a "reward_model" policy: the network adds the prompt region's offset to
q̂ and ĉ (buffer ``region_intercept`` [C, 2K], same centroids as the exploration bonus), the learner's
solution is the ridge regression on [x; e_region; 1] exactly, it resumes from saved state, follows pool
changes by name, and policies without it keep their manifests."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from barp_sidecar.policy.checkpoint import EncoderIdentity, load_checkpoint, save_checkpoint
from barp_sidecar.policy.network import PolicyNetwork
from tests.policy.test_reward_model_network import manifest_for
from tests.trainer_service.test_exploration_regions_learner import regional_network
from tests.trainer_service.test_reward_model_learner import ARMS, DIM, clustered_batch
from trainer.service.policy_source import cold_policy
from trainer.service.reward_model_learner import RewardModelHyperParameters, RewardModelLearner, nearest
from trainer.service.settings import LearnerSettings

HYPER = RewardModelHyperParameters(
    projection_dim=0,
    shared_ridge_lambda=0.0,
    exploration_bonus=0.5,
    region_warmup_events=64,
    region_intercept_lambda=2.0,
)


def intercept_network(regions: int = 2, intercepts: bool = True) -> PolicyNetwork:
    return regional_network(regions, intercepts)


def test_the_network_adds_the_intercept_of_the_prompts_region():
    network = intercept_network()
    with torch.no_grad():
        network.exploration_centroids.copy_(torch.eye(2, DIM))
        network.region_intercept.copy_(torch.arange(2 * 2 * ARMS, dtype=torch.float32).reshape(2, 2 * ARMS))
    x = torch.stack([torch.eye(DIM)[0], torch.eye(DIM)[1]])
    quality, cost = network.predicted_outcomes(x)
    assert torch.equal(quality, network.region_intercept[:, :ARMS])
    assert torch.equal(cost, network.region_intercept[:, ARMS:])


def test_the_learner_solves_the_ridge_on_the_embedding_and_the_region_one_hot():
    learner = RewardModelLearner(intercept_network(), HYPER)
    batches = [clustered_batch(64, 0), clustered_batch(150, 1)]
    for batch in batches:
        learner.step(batch)
    assert learner.regions.fitted
    x = torch.cat([b.embeddings for b in batches]).double()
    action = torch.cat([b.action for b in batches])
    targets = torch.cat([torch.stack([b.quality, b.normalized_cost], 1) for b in batches]).double()
    region = nearest(x, learner.regions.centroids)
    features = torch.cat([x, torch.nn.functional.one_hot(region, 2).double(), torch.ones(len(x), 1)], 1)
    penalty = torch.tensor(
        [HYPER.ridge_lambda] * DIM + [2.0, 2.0] + [HYPER.prior_events], dtype=torch.float64
    )
    prior = torch.zeros(DIM + 3, 2, dtype=torch.float64)
    prior[-1, 0] = HYPER.prior_events * HYPER.prior_quality
    for arm in range(ARMS):
        rows = action == arm
        z = features[rows]
        theta = torch.linalg.solve(z.T @ z + torch.diag(penalty), z.T @ targets[rows] + prior)
        for row, column in ((arm, 0), (ARMS + arm, 1)):
            assert torch.allclose(
                learner.network.reward_head.weight[row].double(), theta[:DIM, column], atol=1e-5
            )
            assert float(learner.network.reward_head.bias[row].detach()) == pytest.approx(
                float(theta[-1, column]), abs=1e-5
            )
            assert torch.allclose(
                learner.network.region_intercept[:, row].double(), theta[DIM : DIM + 2, column], atol=1e-5
            )
    assert float(learner.network.region_intercept.abs().max()) > 0.01  # the offsets are used


def test_resumes_exactly_and_a_state_without_the_sums_is_refused():
    a = RewardModelLearner(intercept_network(), HYPER)
    a.step(clustered_batch(40, 0))  # warming up: targets kept for the intercepts
    b = RewardModelLearner(intercept_network(), HYPER)
    b.load_state(a.state())
    for learner in (a, b):
        learner.step(clustered_batch(40, 1))
        learner.step(clustered_batch(40, 2))
    c = RewardModelLearner(intercept_network(), HYPER)
    c.load_state(b.state())
    for name in ("region_intercept", "exploration_bonus"):
        assert torch.equal(getattr(a.network, name), getattr(b.network, name))
        assert torch.equal(getattr(a.network, name), getattr(c.network, name))
    old = c.state()
    del old["region_sums_z"]
    with pytest.raises(ValueError, match="region_sums_z"):
        RewardModelLearner(intercept_network(), HYPER).load_state(old)
    # Without intercepts, a state saved before the sums existed still loads.
    for name in ("region_sums_z", "region_sums_t", "region_pending_t"):
        old.pop(name, None)
    RewardModelLearner(intercept_network(intercepts=False), HYPER).load_state(old)


def test_a_pool_change_keeps_the_sums_by_name():
    learner = RewardModelLearner(intercept_network(), HYPER)
    learner.step(clustered_batch(200, 0))
    before_z, before_t = learner.regions.sums_z.clone(), learner.regions.sums_t.clone()
    learner.reindex(("a", "b", "c"), ("c", "a", "new"))
    assert torch.equal(learner.regions.sums_z[:, 0], before_z[:, 2])
    assert torch.equal(learner.regions.sums_t[:, 1], before_t[:, 0])
    assert float(learner.regions.sums_z[:, 2].abs().sum()) == 0.0
    assert tuple(learner.network.region_intercept.shape) == (2, 6)
    assert float(learner.network.region_intercept[:, [2, 5]].abs().max()) == 0.0  # a new model: none yet


def test_checkpoint_round_trip_and_manifests_without_intercepts(tmp_path):
    network = intercept_network()
    with torch.no_grad():
        network.region_intercept.uniform_()
        network.exploration_centroids.copy_(torch.eye(2, DIM))
    manifest = dataclasses.replace(manifest_for(network), encoder=EncoderIdentity("hash", DIM, 32, "tail"))
    save_checkpoint(tmp_path / "v1", network, manifest)
    manifest = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    assert manifest["architecture"]["region_intercepts"] is True
    loaded = load_checkpoint(tmp_path / "v1")
    x, w = torch.randn(6, DIM), torch.rand(6)
    assert torch.equal(loaded.network(x, w), network(x, w))
    plain = intercept_network(intercepts=False)
    assert "region_intercepts" not in plain.architecture.to_dict()
    assert not hasattr(plain, "region_intercept")
    with pytest.raises(ValueError, match="region_intercepts needs exploration_regions"):
        intercept_network(regions=0, intercepts=True)


def test_a_cold_start_has_intercepts_only_when_asked_and_with_regions():
    base = LearnerSettings(arms=("a", "b"), tau_usd=0.01, encoder_dim=DIM, region_intercept_lambda=30.0)
    assert cold_policy(base).manifest.architecture.region_intercepts
    off = LearnerSettings(**{**base.__dict__, "region_intercept_lambda": 0.0})
    assert not cold_policy(off).manifest.architecture.region_intercepts
    no_regions = LearnerSettings(**{**base.__dict__, "exploration_regions": 0})
    assert not cold_policy(no_regions).manifest.architecture.region_intercepts
    assert np.isfinite(HYPER.region_intercept_lambda)
