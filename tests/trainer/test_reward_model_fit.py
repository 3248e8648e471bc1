"""Offline ``reward_model`` fit: per-model regression from full-information tables, masks, every w at once."""

import json

import numpy as np
import pytest
import torch

from barp_sidecar.policy.checkpoint import load_checkpoint
from tests.trainer.conftest import learnable_table, synthetic_jsonl_rows, write_jsonl
from trainer.cli import main
from trainer.offline.datasets import RoutingTable
from trainer.offline.reward_model_fit import (
    RewardModelFitConfig,
    fit_reward_model,
    regression_targets,
)

TAU = 0.004


def _greedy(network, x, w_q):
    with torch.no_grad():
        probabilities = network.probabilities(torch.from_numpy(x), torch.full((len(x),), w_q))
    return probabilities.argmax(dim=1).numpy()


@pytest.mark.parametrize("regressor", ["ridge", "mlp"])
def test_fit_predicts_outcomes_and_routes_per_prompt_at_every_weight(regressor):
    table, x = learnable_table(rows_per_cluster=80)
    config = RewardModelFitConfig(regressor=regressor, epochs=150, patience_epochs=30)
    network, facts = fit_reward_model(x, table, TAU, config)
    assert network.architecture.kind == "reward_model"
    assert network.architecture.head_layers == (0 if regressor == "ridge" else 1)
    with torch.no_grad():
        quality, cost = (t.numpy() for t in network.predicted_outcomes(torch.from_numpy(x)))
    # the cheap model that is right on a cluster is predicted right there, and wrong elsewhere
    cluster_a = np.arange(len(x)) < 80
    assert quality[cluster_a, 0].mean() > 0.8 and quality[~cluster_a, 0].mean() < 0.2
    assert quality[~cluster_a, 1].mean() > 0.8 and quality[cluster_a, 1].mean() < 0.2
    # normalised costs: min(c/τ, 1) = 0.025 for the cheap models, 1.0 for big
    np.testing.assert_allclose(cost.mean(axis=0), [0.025, 0.025, 1.0], atol=0.05)
    # one policy, every trade-off: the right cheap model per prompt at w_q 0.3 … 1 (it beats big's 0.8)
    for w_q in (0.3, 0.7, 1.0):
        assert (_greedy(network, x, w_q) == np.where(cluster_a, 0, 1)).mean() > 0.95
    assert ("ridge_lambda" in facts) == (regressor == "ridge")


def test_rows_train_only_the_models_they_observed():
    table, x = learnable_table(rows_per_cluster=60)
    observed = np.ones(table.quality.shape, dtype=bool)
    observed[:, 2] = np.arange(len(table)) % 2 == 0  # big observed on half the rows only
    quality = table.quality.copy()
    quality[~observed] = 0.0  # the loaders' placeholder for unobserved outcomes
    masked = RoutingTable(
        prompts=table.prompts,
        tasks=table.tasks,
        splits=table.splits,
        models=table.models,
        quality=quality,
        cost_usd=np.where(observed, table.cost_usd, 0.0),
        observed=observed,
    )
    targets = regression_targets(masked, TAU)
    assert targets.observed[:, 2].sum() == len(table) // 2 and targets.observed[:, 5].sum() == len(table) // 2
    network, _ = fit_reward_model(x, masked, TAU, RewardModelFitConfig())
    with torch.no_grad():
        quality_hat, cost_hat = (t.numpy() for t in network.predicted_outcomes(torch.from_numpy(x)))
    # had the placeholders been read as outcomes, big would look half as good and half as costly
    assert quality_hat[:, 2].mean() == pytest.approx(table.quality[observed[:, 2], 2].mean(), abs=0.05)
    assert cost_hat[:, 2].mean() == pytest.approx(1.0, abs=0.05)


def test_fit_is_deterministic_and_stores_the_exploration_scale():
    table, x = learnable_table()
    config = RewardModelFitConfig(exploration_scale=42.0)
    first, _ = fit_reward_model(x, table, TAU, config)
    second, _ = fit_reward_model(x, table, TAU, config)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert float(first.exploration_scale) == 42.0


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="regressor"):
        RewardModelFitConfig(regressor="forest")
    with pytest.raises(ValueError, match="exploration_scale"):
        RewardModelFitConfig(exploration_scale=0.0)


def test_offline_reward_model_writes_a_checkpoint_evaluate_scores(tmp_path, capsys):
    data = write_jsonl(tmp_path / "log.jsonl", synthetic_jsonl_rows())
    out = tmp_path / "policy"
    cache = str(tmp_path / "cache")
    args = ["offline", "--data", str(data), "--out", str(out), "--cache-dir", cache]
    common = ["--encoder-model", "hash:64", "--no-progress"]
    assert main([*args, *common, "--architecture", "reward_model", "--exploration-scale", "50"]) == 0
    manifest = load_checkpoint(out).manifest
    assert manifest.architecture.kind == "reward_model"
    assert manifest.training["method"].startswith("full-information per-model")
    assert manifest.training["config"]["regressor"] == "ridge"
    assert len(manifest.training["fit"]["ridge_lambda"]["quality"]) == 3
    assert "bandit_reveals" not in manifest.training
    assert "held-out summary" in capsys.readouterr().out
    report = tmp_path / "eval"
    evaluate = ["evaluate", "--policy", str(out), "--data", str(data), "--out", str(report), "--cache-dir"]
    assert main([*evaluate, cache, "--no-progress"]) == 0
    results = json.loads((report / "report.json").read_text())["results"]
    assert results["1.0"]["policy"]["reward"] >= results["1.0"]["best_single"]["reward"]


def test_leave_one_task_out_harness_fits_reward_models(tmp_path):
    from trainer.offline.leave_one_task_out import main as loto

    log = write_jsonl(tmp_path / "log.jsonl", synthetic_jsonl_rows())
    args = ["--data", str(log), "--out", str(tmp_path / "loto"), "--cache-dir", str(tmp_path / "cache")]
    assert loto([*args, "--encoder-model", "hash:64", "--architecture", "reward_model"]) == 0
    summary = json.loads((tmp_path / "loto" / "loto.json").read_text())
    assert [row["task"] for row in summary["tasks"]] == ["arc_challenge", "mbpp", "winogrande"]
    for row in summary["tasks"]:
        assert row["train_rows"] == 60 and 0.0 <= row["apgr"] <= row["apgr_oracle_ranking"] + 1e-9


def test_a_non_positive_exploration_scale_exits_2_naming_the_option(tmp_path, capsys):
    data = write_jsonl(tmp_path / "log.jsonl", synthetic_jsonl_rows())
    args = ["offline", "--data", str(data), "--out", str(tmp_path / "p"), "--architecture", "reward_model"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--exploration-scale", "0"])
    assert exit_info.value.code == 2
    assert "--exploration-scale: must be > 0, not 0" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
