"""The evaluation metrics on hand-computed cases: expectations, hindsight routers, APGR and CPT."""

import numpy as np
import pytest

from trainer.offline import routing_metrics as rm


def _data():
    #            a    b    c          a      b     c
    quality = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    cost = np.tile([0.001, 0.001, 0.01], (4, 1))
    allowed = np.ones((4, 3), dtype=bool)
    allowed[3, 0] = False  # model a was not observed on the last row
    return rm.EvaluationData(("a", "b", "c"), quality, cost, allowed, np.array(["t1", "t1", "t2", "t2"]))


def test_summarize_is_the_expectation_under_p_and_refuses_masked_mass():
    data = _data()
    p = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    out = rm.summarize(data, p, quality_weight=1.0, tau_usd=0.01)
    assert out["score"] == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert out["score_task_mean"] == pytest.approx((0.75 + 1.0) / 2)
    assert out["cost_usd"] == pytest.approx((0.001 + 0.001 + 0.001 + 0.01) / 4)
    assert out["share"] == {"a": 0.375, "b": 0.375, "c": 0.25}
    assert out["per_task"]["t1"] == {"score": 0.75, "cost_usd": 0.001, "reward": 0.75, "rows": 2}
    # at w_q = 0 the reward is −min(c/τ, 1) of the chosen model
    assert rm.summarize(data, p, 0.0, 0.01)["reward"] == pytest.approx(-(0.1 + 0.1 + 0.1 + 1.0) / 4)
    p[3] = [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="not allowed"):
        rm.summarize(data, p, 1.0, 0.01)


def test_hindsight_routers_fall_back_where_their_model_is_absent():
    data = _data()
    # w_q = 1: c is best on average (0.75); per task: t1 -> c (1.0), t2 -> a (0.5) but a is absent on row 3
    assert rm.best_single_choices(data, 1.0, 0.01).tolist() == [2, 2, 2, 2]
    assert rm.per_task_best_choices(data, 1.0, 0.01).tolist() == [2, 2, 0, 2]
    assert rm.oracle_choices(data, 1.0, 0.01).tolist() == [0, 1, 0, 2]
    assert rm.fixed_order_choices(data.allowed, [0, 1]).tolist() == [0, 0, 0, 1]


def test_apgr_and_cpt_of_reference_curves():
    assert rm.apgr([]) == pytest.approx(0.5)  # only the always-cheap and always-strong ends: random mix
    assert rm.cpt([], 0.8) == pytest.approx(0.8)
    switch = [(0.0, 0.0), (1.0, 1.0)]
    assert rm.apgr(switch) == pytest.approx(0.5) and rm.cpt(switch, 0.5) == pytest.approx(0.5)
    good = [(0.2, 0.6), (0.5, 0.9)]  # recovers 60 % of the gap at 20 % strong calls
    assert rm.apgr(good) == pytest.approx(0.2 * 0.3 + 0.3 * 0.75 + 0.5 * 0.95)
    assert rm.cpt(good, 0.5) == pytest.approx(0.5 / 0.6 * 0.2)
    assert rm.cpt(good, 0.8) == pytest.approx(0.2 + (0.2 / 0.3) * 0.3)


def test_oracle_ranking_sends_the_biggest_gains_first():
    strong = np.array([1.0, 1.0, 0.0, 1.0])
    cheap = np.array([0.0, 1.0, 1.0, 0.0])
    points = rm.oracle_ranking_points(strong, cheap)
    assert [round(s, 2) for s, _ in points] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [v for _, v in points] == pytest.approx([0.5, 0.75, 1.0, 1.0, 0.75])
    summary = rm.pair_summary([{"strong_share": s, "score": v} for s, v in points], 0.75, 0.5)
    assert summary["cpt50"] == pytest.approx(0.125) and summary["apgr"] > 1.0
    assert summary["max_below_random_mix"] == pytest.approx(0.0)


def test_automatic_pair_is_best_single_and_cheapest_within_the_window():
    quality = np.array([[0.9, 0.8, 0.2], [0.9, 0.8, 0.2]])
    cost = np.array([[1.0, 0.5, 0.1], [1.0, 0.5, 0.1]])
    data = rm.EvaluationData(
        ("big", "mid", "tiny"), quality, cost, np.ones((2, 3), bool), np.array(["t", "t"])
    )
    assert rm.automatic_pair(data) == (0, 1)
    assert rm.automatic_pair(data, window=0.05) == (0, 2)  # none within: the cheapest other model


def test_signal_probe_finds_per_prompt_signal_a_full_information_knn_can_use(tmp_path):
    """Generated log: the right cheap model depends on the task words, which the hash encoder sees."""
    import json

    from tests.trainer.conftest import synthetic_jsonl_rows, write_jsonl
    from trainer.offline.signal_probe import main as probe

    log = write_jsonl(tmp_path / "log.jsonl", synthetic_jsonl_rows(per_task=80))
    args = ["--data", str(log), "--pair", "cheap-a", "cheap-b", "--cache-dir", str(tmp_path / "cache")]
    assert probe([*args, "--encoder-model", "hash:64", "--out", str(tmp_path / "probe.json")]) == 0
    result = json.loads((tmp_path / "probe.json").read_text())
    assert (result["strong"], result["cheap"], result["test_rows"]) == ("cheap-a", "cheap-b", 60)
    # cheap-a is right on arc/mbpp, cheap-b on winogrande: ranking by kNN's q̂ beats the random mix
    assert result["knn25"]["apgr"] > 0.6 and result["per_task_best"]["apgr"] > 0.6
    assert result["oracle_ranking"]["apgr"] >= result["knn25"]["apgr"] - 1e-9


def test_router_probe_scores_every_router_against_per_task_best(tmp_path, capsys):
    """Generated log: the task decides the right cheap model; the task-aware routers find it."""
    from tests.trainer.conftest import synthetic_jsonl_rows, write_jsonl
    from trainer.offline.router_probe import EB_SETTINGS, KNN_K
    from trainer.offline.router_probe import main as probe

    log = write_jsonl(tmp_path / "log.jsonl", synthetic_jsonl_rows(per_task=80))
    args = ["--data", str(log), "--cache-dir", str(tmp_path / "cache"), "--encoder-model", "hash:64"]
    assert probe([*args, "--id-tasks", "winogrande", "mbpp"]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    table = {c[1].strip(): [float(v) for v in c[2:5]] for c in (line.split("|") for line in lines)}
    expected = {"per_task_best (hindsight)", "ridge", "logistic", "task_mean"}
    expected |= {f"knn{k}" for k in KNN_K} | {f"eb{a}/{b}/{w}" for a, b, w in EB_SETTINGS}
    assert set(table) == expected
    # the right cheap model is always right (score 1) and costs 1/40 of τ-capped big
    assert table["per_task_best (hindsight)"][0] == pytest.approx(1.0)
    for router in ("task_mean", "eb25/25/0.0", "knn25"):
        score, reward_half, id_mean = table[router]
        assert score == pytest.approx(1.0) and id_mean == pytest.approx(100.0)
        assert reward_half == pytest.approx(table["per_task_best (hindsight)"][1])


def test_router_probe_logistic_recovers_each_models_outcome_and_ignores_unobserved_rows():
    """Model 0 is right where x₀ > 0, model 1 everywhere; model 1's unobserved rows hold junk outcomes."""
    from trainer.offline.router_probe import fit_logistic

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    quality = np.stack([(x[:, 0] > 0).astype(float), np.ones(400)], axis=1)
    observed = np.ones((400, 2), dtype=bool)
    observed[:100, 1] = False
    quality[:100, 1] = 0.0  # never observed: must not pull model 1's estimate down
    theta = fit_logistic(x, quality, observed)
    z = np.concatenate([x, np.ones((400, 1))], axis=1)
    q_hat = 1.0 / (1.0 + np.exp(-(z @ theta.T)))
    assert ((q_hat[:, 0] > 0.5) == (x[:, 0] > 0)).mean() > 0.95
    assert q_hat[:, 1].min() > 0.9


def test_router_probe_validation_split_never_reads_a_test_row(tmp_path):
    from tests.trainer.conftest import synthetic_jsonl_rows, write_jsonl
    from trainer.offline.datasets import load_table
    from trainer.offline.router_probe import fit_and_scored_rows

    table = load_table(write_jsonl(tmp_path / "log.jsonl", synthetic_jsonl_rows(per_task=80)))
    splits, tasks = np.asarray(table.splits), np.asarray(table.tasks)
    fit, scored = fit_and_scored_rows(table, "validation")
    assert set(splits[fit]) == set(splits[scored]) == {"train"}
    assert not set(fit) & set(scored) and len(fit) + len(scored) == (splits == "train").sum()
    for task in set(tasks):  # 15 % of every task's train rows
        share = (tasks[scored] == task).sum() / ((tasks == task) & (splits == "train")).sum()
        assert share == pytest.approx(0.15, abs=0.02)
    train, test = fit_and_scored_rows(table, "test")
    assert set(splits[train]) == {"train"} and set(splits[test]) == {"test"}
    with pytest.raises(ValueError, match="split"):
        fit_and_scored_rows(table, "holdout")


def test_router_probe_samples_the_same_rows_of_each_split_for_every_encoder(tmp_path):
    from tests.trainer.conftest import synthetic_jsonl_rows, write_jsonl
    from trainer.offline.datasets import load_table
    from trainer.offline.router_probe import sample_rows

    table = load_table(write_jsonl(tmp_path / "log.jsonl", synthetic_jsonl_rows(per_task=80)))
    sample = sample_rows(table, 20, seed=3)
    assert sorted(sample.splits) == ["test"] * 20 + ["train"] * 20
    assert set(sample.prompts) <= set(table.prompts)
    assert sample.prompts == sample_rows(table, 20, seed=3).prompts  # seeded: encoders see the same rows
    assert sample.prompts != sample_rows(table, 20, seed=4).prompts
    assert sample_rows(table, 0, seed=3) is table
    assert len(sample_rows(table, 10_000, seed=3)) == len(table)
