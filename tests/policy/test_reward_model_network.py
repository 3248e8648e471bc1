"""The "reward_model" policy kind: logits from predicted quality/cost, exact IGW probabilities."""

from __future__ import annotations

import json

import pytest
import torch

from barp_sidecar.errors import CheckpointError
from barp_sidecar.policy.checkpoint import EncoderIdentity, PolicyManifest, load_checkpoint, save_checkpoint
from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork


def reward_model(exploration: str = "inverse_gap", scale: float = 10.0) -> PolicyNetwork:
    architecture = PolicyArchitecture(
        embedding_dim=4, num_models=3, head_layers=0, kind="reward_model", exploration=exploration
    )
    network = PolicyNetwork(architecture).eval()
    with torch.no_grad():
        network.reward_head.weight.zero_()
        # q̂ = (0.9, 0.5, 0.2), ĉ = (1.0, 0.1, 0.0) whatever the prompt.
        network.reward_head.bias.copy_(torch.tensor([0.9, 0.5, 0.2, 1.0, 0.1, 0.0]))
        network.exploration_scale.fill_(scale)
    return network


def test_predicted_rewards_rank_models_for_every_preference():
    network = reward_model()
    x = torch.zeros(2, 4)
    greedy = network(x, torch.tensor([1.0, 0.0])).argmax(dim=1)
    # w_q = 1: quality alone (model 0); w_q = 0: cost alone (model 2, free).
    assert greedy.tolist() == [0, 2]


def test_inverse_gap_probabilities_are_exact():
    network = reward_model(scale=10.0)
    probs = network.probabilities(torch.zeros(1, 4), torch.tensor([0.5]))[0].double().detach()
    r = torch.tensor([0.5 * 0.9 - 0.5 * 1.0, 0.5 * 0.5 - 0.5 * 0.1, 0.5 * 0.2])  # best: model 1 (0.2)
    expected_others = 1.0 / (3 + 10.0 * (r[1] - r[[0, 2]]))
    assert probs[[0, 2]].tolist() == pytest.approx(expected_others.tolist(), rel=1e-5)
    assert float(probs[1]) == pytest.approx(1.0 - float(expected_others.sum()), rel=1e-5)


def test_inverse_gap_respects_the_mask():
    network = reward_model()
    probs = network.probabilities(torch.zeros(1, 4), torch.tensor([0.5]), torch.tensor([[True, False, True]]))
    assert float(probs[0, 1]) == 0.0 and float(probs.sum()) == pytest.approx(1.0)


def test_boltzmann_scale_sharpens_without_changing_the_greedy_choice():
    soft, sharp = reward_model("boltzmann", 1.0), reward_model("boltzmann", 100.0)
    x, w = torch.zeros(1, 4), torch.tensor([0.8])
    assert soft(x, w).argmax() == sharp(x, w).argmax()
    assert float(sharp.probabilities(x, w).max()) > float(soft.probabilities(x, w).max())


def manifest_for(network: PolicyNetwork) -> PolicyManifest:
    return PolicyManifest(
        version=1,
        models=("a", "b", "c"),
        encoder=EncoderIdentity("hash", 4, 32, "tail"),
        tau_usd=0.01,
        architecture=network.architecture,
    )


def test_checkpoint_round_trip_keeps_kind_and_scale(tmp_path):
    network = reward_model(scale=7.0)
    save_checkpoint(tmp_path / "v1", network, manifest_for(network))
    loaded = load_checkpoint(tmp_path / "v1")
    assert loaded.manifest.architecture.kind == "reward_model"
    assert float(loaded.network.exploration_scale) == 7.0
    x, w = torch.randn(5, 4), torch.rand(5)
    assert torch.equal(loaded.network(x, w), network(x, w))


def test_old_manifests_without_kind_load_as_barp(tmp_path):
    network = PolicyNetwork(PolicyArchitecture(embedding_dim=4, num_models=3, head_hidden=8)).eval()
    save_checkpoint(tmp_path / "v1", network, manifest_for(network))
    path = tmp_path / "v1" / "manifest.json"
    data = json.loads(path.read_text())
    for key in ("kind", "exploration"):
        del data["architecture"][key]
    path.write_text(json.dumps(data))
    assert load_checkpoint(tmp_path / "v1").manifest.architecture.kind == "barp"


def test_bad_kind_is_a_clear_checkpoint_error(tmp_path):
    network = reward_model()
    save_checkpoint(tmp_path / "v1", network, manifest_for(network))
    path = tmp_path / "v1" / "manifest.json"
    data = json.loads(path.read_text())
    data["architecture"]["kind"] = "transformer"
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="kind must be one of"):
        load_checkpoint(tmp_path / "v1")
