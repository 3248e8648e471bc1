"""Optimism by region in a "reward_model" policy: a [C, K] bonus looked up by the prompt's nearest centroid
narrows the inverse-gap weighting's gaps (never below the floor), never changes which model is greedy; it
round-trips through a checkpoint and policies without it keep their manifests byte-identical."""

from __future__ import annotations

import json

import pytest
import torch

from barp_sidecar.policy.checkpoint import load_checkpoint, save_checkpoint
from barp_sidecar.policy.network import GAP_FLOOR_FRACTION, PolicyArchitecture, PolicyNetwork
from tests.policy.test_reward_model_network import manifest_for

SCALE = 100.0


def regional(regions: int = 2) -> PolicyNetwork:
    architecture = PolicyArchitecture(
        embedding_dim=4,
        num_models=3,
        head_layers=0,
        kind="reward_model",
        exploration="inverse_gap",
        exploration_regions=regions,
    )
    network = PolicyNetwork(architecture).eval()
    with torch.no_grad():
        network.reward_head.weight.zero_()
        # q̂ = (0.9, 0.5, 0.2), ĉ = (0, 0, 0) whatever the prompt: model 0 is greedy everywhere.
        network.reward_head.bias.copy_(torch.tensor([0.9, 0.5, 0.2, 0.0, 0.0, 0.0]))
        network.exploration_scale.fill_(SCALE)
        if regions:
            network.exploration_centroids.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
            # Region 0: model 1 well tried (no bonus); region 1: model 1 rarely tried there (bonus 0.3).
            network.exploration_bonus.copy_(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.3, 0.0]]))
    return network


def test_the_bonus_of_the_prompts_region_narrows_the_gap_and_the_greedy_choice_stays():
    network = regional()
    x = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.1, 0.9, 0.0, 0.0]])
    assert network.exploration_region(x).tolist() == [0, 1]
    probs = network.probabilities(x, torch.tensor([1.0, 1.0])).double().detach()
    gap = 0.9 - 0.5
    assert float(probs[0, 1]) == pytest.approx(1.0 / (3 + SCALE * gap), rel=1e-5)
    assert float(probs[1, 1]) == pytest.approx(1.0 / (3 + SCALE * (gap - 0.3)), rel=1e-5)
    assert float(probs[1, 2]) == pytest.approx(1.0 / (3 + SCALE * 0.7), rel=1e-5)
    assert probs.sum(dim=1).tolist() == pytest.approx([1.0, 1.0])
    assert probs.argmax(dim=1).tolist() == [0, 0]  # greedy: argmax r̂ in both regions


def test_a_bonus_larger_than_the_gap_stops_at_the_floor_and_the_best_model_stays_most_probable():
    network = regional()
    with torch.no_grad():
        network.exploration_bonus.fill_(5.0)  # every model untried everywhere
    probs = network.probabilities(torch.tensor([[0.1, 0.9, 0.0, 0.0]]), torch.tensor([1.0]))[0].detach()
    assert float(probs[1]) == pytest.approx(1.0 / (3 + SCALE * GAP_FLOOR_FRACTION * 0.4), rel=1e-5)
    assert float(probs[2]) == pytest.approx(1.0 / (3 + SCALE * GAP_FLOOR_FRACTION * 0.7), rel=1e-5)
    assert int(probs.argmax()) == 0 and float(probs[0]) > float(probs[1])


def test_regions_respect_the_mask_and_the_exploration_share():
    network = regional()
    x = torch.tensor([[0.1, 0.9, 0.0, 0.0]])
    probs = network.probabilities(x, torch.tensor([1.0]), torch.tensor([[True, False, True]])).detach()
    assert float(probs[0, 1]) == 0.0 and float(probs.sum()) == pytest.approx(1.0)
    network.architecture = PolicyArchitecture(
        **{**network.architecture.__dict__, "exploration_share": (1, 1, 0)}
    )
    probs = network.probabilities(x, torch.tensor([1.0])).detach()
    assert float(probs[0, 2]) == 0.0 and float(probs.sum()) == pytest.approx(1.0)


def test_checkpoint_round_trip_keeps_regions(tmp_path):
    network = regional()
    save_checkpoint(tmp_path / "v1", network, manifest_for(network))
    manifest = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    assert manifest["architecture"]["exploration_regions"] == 2
    loaded = load_checkpoint(tmp_path / "v1")
    assert torch.equal(loaded.network.exploration_bonus, network.exploration_bonus)
    assert torch.equal(loaded.network.exploration_centroids, network.exploration_centroids)
    x, w = torch.randn(6, 4), torch.rand(6)
    assert torch.equal(loaded.network(x, w), network(x, w))


def test_policies_without_regions_keep_their_manifest_format(tmp_path):
    network = regional(regions=0)
    assert tuple(network.exploration_scale.shape) == (1,)
    assert not hasattr(network, "exploration_centroids") and not hasattr(network, "exploration_bonus")
    assert "exploration_regions" not in network.architecture.to_dict()
    save_checkpoint(tmp_path / "v1", network, manifest_for(network))
    assert load_checkpoint(tmp_path / "v1").manifest.architecture.exploration_regions == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"exploration": "boltzmann", "exploration_regions": 2},
            "needs kind 'reward_model' with exploration",
        ),
        ({"exploration_regions": -1}, "exploration_regions must be >= 0"),
    ],
)
def test_bad_region_settings_are_refused(fields, message):
    base = {"embedding_dim": 4, "num_models": 3, "head_layers": 0, "kind": "reward_model"}
    with pytest.raises(ValueError, match=message):
        PolicyArchitecture(**{**base, "exploration": "inverse_gap", **fields})
