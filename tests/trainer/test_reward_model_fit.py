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
    mean_of_reward_models,
    neighbour_means,
    regression_targets,
    smoothed_targets,
)

TAU = 0.004


def _greedy(network, x, w_q):
    with torch.no_grad():
        probabilities = network.probabilities(torch.from_numpy(x), torch.full((len(x),), w_q))
    return probabilities.argmax(dim=1).numpy()


@pytest.mark.parametrize("regressor", ["ridge", "mlp", "smoothed_mlp"])
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


def test_neighbour_means_leave_each_row_out_and_skip_unobserved_outcomes():
    x = np.array([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0], [0.141, 0.99]], dtype=np.float32)
    values = np.array([[1.0, 5.0], [3.0, 7.0], [10.0, 0.0], [20.0, 9.0]])
    weights = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    # k = 1: each row gets its nearest *other* row's value; row 3's neighbour (2) lacks column 1 -> 0
    np.testing.assert_allclose(
        neighbour_means(x, values, weights, 1), [[3.0, 7.0], [1.0, 5.0], [20.0, 9.0], [10.0, 0.0]]
    )
    # k larger than the other rows: every other row, weighted by what it observed
    everyone = neighbour_means(x, values, weights, 10, chunk_rows=3)
    np.testing.assert_allclose(everyone[0], [(3 + 10 + 20) / 3, (7 + 9) / 2])
    # other prompts asking: nobody is left out (the query next to rows 0 and 1 gets both)
    asked = neighbour_means(x, values, weights, 2, queries=np.array([[1.0, 0.05]], dtype=np.float32))
    np.testing.assert_allclose(asked, [[2.0, 6.0]])


def _one_task_two_clusters():
    table, x = learnable_table(rows_per_cluster=60)
    one_task = RoutingTable(
        prompts=table.prompts,
        tasks=tuple("mixed" for _ in table.tasks),
        splits=table.splits,
        models=table.models,
        quality=table.quality,
        cost_usd=table.cost_usd,
    )
    return one_task, x


def test_smoothed_targets_are_the_task_prior_plus_the_weighted_neighbour_residual():
    table, x = _one_task_two_clusters()
    targets = regression_targets(table, TAU)
    cluster_a = np.arange(len(x)) < 60
    prior_only = smoothed_targets(
        x, table.tasks, targets, RewardModelFitConfig(smoothing_residual_k=20, smoothing_residual_weight=0.0)
    )
    # one task: the prior is the task mean everywhere (cheap-a right on half the prompts)
    np.testing.assert_allclose(prior_only.values[:, 0], 0.5)
    assert prior_only.observed.all()
    half = smoothed_targets(
        x, table.tasks, targets, RewardModelFitConfig(smoothing_residual_k=20, smoothing_residual_weight=0.5)
    )
    # 20 neighbours all from the row's own cluster: residual ±0.5, half of it added to the prior
    np.testing.assert_allclose(half.values[cluster_a, 0], 0.75)
    np.testing.assert_allclose(half.values[~cluster_a, 0], 0.25)
    np.testing.assert_allclose(half.values[:, 3], 0.025)  # normalised cost of cheap-a, constant


def test_smoothed_targets_of_two_sources_never_count_anothers_missing_models_as_zero():
    """Source 1 (task t1) observed models a and b, source 2 (task t2) only b; their prompts interleave, so
    every row's neighbours come from both. a's prior is t1's mean of a (renormalised over the tasks that
    observed it), not diluted toward 0 by t2's neighbours; t2's rows stay unobserved for a."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t1 = np.arange(200) % 2 == 0
    tasks = tuple("t1" if first else "t2" for first in t1)
    quality = np.stack([np.where(t1, 0.9, 0.0), np.where(t1, 0.5, 0.7)], axis=1)
    observed = np.stack([t1, np.ones(200, dtype=bool)], axis=1)
    table = RoutingTable(
        prompts=tuple(f"p{i}" for i in range(200)),
        tasks=tasks,
        splits=("train",) * 200,
        models=("a", "b"),
        quality=quality,
        cost_usd=np.full((200, 2), 0.001),
        observed=observed,
    )
    targets = regression_targets(table, TAU)
    smoothed = smoothed_targets(
        x, table.tasks, targets, RewardModelFitConfig(smoothing_task_k=25, smoothing_residual_weight=0.0)
    )
    np.testing.assert_allclose(smoothed.values[t1, 0], 0.9)  # was ~0.45: half the neighbours are t2's
    np.testing.assert_array_equal(smoothed.observed, targets.observed)
    # b, observed by both tasks: the neighbours' mix of the two task means, as before
    assert 0.5 - 1e-9 <= smoothed.values[:, 1].min() < smoothed.values[:, 1].max() <= 0.7 + 1e-9
    # asked about other prompts (the kNN router): every estimate is given, a's still t1's mean
    config = RewardModelFitConfig(smoothing_task_k=25, smoothing_residual_weight=0.0)
    asked = smoothed_targets(x, table.tasks, targets, config, queries=x[:3])
    assert asked.observed.all()
    np.testing.assert_allclose(asked.values[:, 0], 0.9)


def test_smoothed_mlp_routes_within_a_task_only_through_the_residual():
    table, x = _one_task_two_clusters()
    cluster_a = np.arange(len(x)) < 60
    for weight in (0.5, 0.0):
        config = RewardModelFitConfig(
            regressor="smoothed_mlp", smoothing_residual_k=20, smoothing_residual_weight=weight
        )
        network, _ = fit_reward_model(x, table, TAU, config)
        with torch.no_grad():
            quality = network.predicted_outcomes(torch.from_numpy(x))[0].numpy()
        gap = quality[cluster_a, 0].mean() - quality[~cluster_a, 0].mean()
        if weight:  # cheap-a is predicted better on its cluster, and the policy routes per prompt
            assert gap == pytest.approx(0.5, abs=0.1)
            assert (_greedy(network, x, 0.7) == np.where(cluster_a, 0, 1)).mean() > 0.95
        else:  # the task prior alone cannot tell the two clusters apart
            assert abs(gap) < 0.1


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
    with pytest.raises(ValueError, match="smoothing_task_k"):
        RewardModelFitConfig(smoothing_task_k=0)
    with pytest.raises(ValueError, match="smoothing_residual_weight"):
        RewardModelFitConfig(smoothing_residual_weight=1.5)


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


def test_mean_of_reward_models_is_one_network_predicting_the_mean_of_both():
    table, x = learnable_table(rows_per_cluster=40)
    ridge, _ = fit_reward_model(x, table, TAU, RewardModelFitConfig(regressor="ridge"))
    smoothed, _ = fit_reward_model(x, table, TAU, RewardModelFitConfig(regressor="smoothed_mlp", epochs=20))
    combined = mean_of_reward_models(ridge, smoothed)
    assert combined.architecture.head_layers == 1
    assert combined.architecture.head_hidden == smoothed.architecture.head_hidden + 2 * x.shape[1]
    features = torch.from_numpy(x)
    with torch.no_grad():
        for got, a, b in zip(
            combined.predicted_outcomes(features),
            ridge.predicted_outcomes(features),
            smoothed.predicted_outcomes(features),
            strict=True,
        ):
            assert float((a - b).abs().max()) > 0.01  # the two differ, so the mean is a real test
            torch.testing.assert_close(got, (a + b) / 2, atol=1e-5, rtol=0)
    assert float(combined.exploration_scale) == float(smoothed.exploration_scale)
    with pytest.raises(ValueError, match="linear reward_model network and a one-hidden-layer one"):
        mean_of_reward_models(smoothed, ridge)


def test_ensemble_probe_validation_scores_only_train_split_rows(tmp_path, capsys):
    from trainer.offline.ensemble_probe import ROUTERS
    from trainer.offline.ensemble_probe import main as probe

    log = write_jsonl(tmp_path / "log.jsonl", synthetic_jsonl_rows(per_task=20))
    common = ["--data", str(log), "--cache-dir", str(tmp_path / "cache"), "--encoder-model", "hash:64"]
    for split in ("validation", "test"):
        assert probe([*common, "--split", split, "--out", str(tmp_path / split)]) == 0
    validation = json.loads((tmp_path / "validation" / "probe.json").read_text())["sources"][0]
    test = json.loads((tmp_path / "test" / "probe.json").read_text())["sources"][0]
    for name in ROUTERS:
        # 15 train rows per task, 15 % held: 2 rows each; leave-one-task-out scores T's 15 train rows
        assert validation["in_distribution"][name]["rows"] == 6
        assert [t["rows"] for t in validation["loto"][name]] == [15, 15, 15]
        assert test["in_distribution"][name]["rows"] == 15
        assert [t["rows"] for t in test["loto"][name]] == [5, 5, 5]
        assert all(t["apgr"] is None or t["apgr"] <= 1.5 for t in test["loto"][name])
    assert "| mean |" in capsys.readouterr().out
