"""The two commands on a generated JSONL log with the hash encoder: files, shapes, loadable checkpoint."""

import json

from barp_sidecar.policy.checkpoint import load_checkpoint
from tests.trainer.conftest import synthetic_jsonl_rows, write_jsonl
from trainer.cli import main

FAST = ["--encoder-model", "hash:64", "--steps", "60", "--batch-size", "32", "--no-progress"]


def test_offline_writes_a_loadable_checkpoint_recording_tau(tmp_path, capsys):
    data = write_jsonl(tmp_path / "log.jsonl", synthetic_jsonl_rows())
    out = tmp_path / "policy"
    args = ["offline", "--data", str(data), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), *FAST]
    assert main([*args, "--tasks", "arc_challenge", "winogrande", "--seed", "3"]) == 0
    policy = load_checkpoint(out)
    assert policy.manifest.models == ("cheap-a", "cheap-b", "big")
    assert policy.manifest.encoder.encoder_id == "hash:64"
    assert policy.manifest.tau_usd > 0
    assert policy.manifest.training["tasks"] == ["arc_challenge", "winogrande"]
    assert policy.manifest.training["bandit_reveals"] == 60 * 32
    # Stored with it: a calibration set of the training prompts' own embeddings (hash:64 here).
    assert policy.calibration is not None and policy.manifest.calibration is not None
    assert policy.calibration.embeddings.shape == (policy.manifest.calibration.count, 64)
    assert policy.manifest.calibration.count == min(64, policy.manifest.training["rows"])
    assert policy.calibration.preference_weights.tolist() == [0.0, 0.5, 1.0]
    # offline ends with the held-out (test split) summary of the policy it wrote
    printed = capsys.readouterr().out
    assert "held-out summary" in printed and "(test split, 20 rows, 2 tasks)" in printed
    assert " 1.0 per_task_best " in printed and "pair big / cheap-a: APGR" in printed
    assert main(args) == 2  # replacing needs --force
    assert main([*args, "--force"]) == 0
    assert load_checkpoint(out).manifest.training["tasks"] == ["arc_challenge", "mbpp", "winogrande"]


def test_reproduce_writes_report_json_md_and_png(tmp_path):
    data = write_jsonl(tmp_path / "log.jsonl", synthetic_jsonl_rows())
    out = tmp_path / "report"
    args = [
        "reproduce",
        "--data",
        str(data),
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        *FAST,
    ]
    assert main([*args, "--seeds", "0", "1", "--bandit-events", "200", "--mlp-steps", "50"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["seeds"] == [0, 1] and report["tau"] > 0
    for setting in ("in_distribution", "out_of_distribution"):
        routers = report[setting]
        for router in ("barp", "barp_std", "oracle", "random", "knn", "mlp_full_info", "per_task_best"):
            assert router in routers
        assert {"linucb", "lin_ts", "eps_greedy", "model:big"} <= set(routers)
        assert list(routers["barp"]) == [f"{i / 10:.1f}" for i in range(11)]
        entry = routers["barp"]["0.5"]
        assert 0 <= entry["score"] <= 1 and entry["cost_usd"] > 0
        assert set(entry["per_task"]) == (
            {"mbpp"} if setting == "out_of_distribution" else {"arc_challenge", "mbpp", "winogrande"}
        )
        assert routers["oracle"]["0.5"]["reward"] >= max(
            routers[f"model:{m}"]["0.5"]["reward"] for m in ("big", "cheap-a", "cheap-b")
        )
    assert "headroom_captured" in report and "targets" in report
    assert (out / "pareto.png").stat().st_size > 10_000
    assert "| barp |" in (out / "report.md").read_text()


def _second_source_rows():
    """Another log: one shared model (big) and one the first log lacks (other-c), on a new task."""
    rows = []
    for i in range(40):
        rows.append(
            {
                "prompt": f"translation request {i} into french",
                "task": "translate",
                "scores": {"big": 0.5, "other-c": 1.0},
                "costs": {"big": 0.004, "other-c": 0.0002},
                "split": "test" if i % 4 == 0 else "train",
            }
        )
    return rows


def test_offline_trains_on_sources_with_different_models(tmp_path, capsys):
    first = write_jsonl(tmp_path / "first.jsonl", synthetic_jsonl_rows())
    second = write_jsonl(tmp_path / "second.jsonl", _second_source_rows())
    out = tmp_path / "policy"
    args = ["offline", "--data", str(first), str(second), "--out", str(out)]
    assert main([*args, "--cache-dir", str(tmp_path / "cache"), *FAST]) == 0
    manifest = load_checkpoint(out).manifest
    assert manifest.models == ("cheap-a", "cheap-b", "big", "other-c")  # the union of the sources' models
    assert manifest.training["sources"] == [str(first), str(second)]
    assert set(manifest.training["tau_usd_by_source"]) == {str(first), str(second)}
    printed = capsys.readouterr().out
    # one held-out summary per source, each on its own test split and models
    assert f"{first} (test split, 30 rows, 3 tasks)" in printed
    assert f"{second} (test split, 10 rows, 1 tasks)" in printed
    assert "pair big / other-c" in printed or "pair other-c / big" in printed
    # every decision on the second source stays within its models (the rest are unobserved there)
    report = tmp_path / "eval"
    evaluate = ["evaluate", "--policy", str(out), "--data", str(second), "--out", str(report)]
    assert main([*evaluate, "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    results = json.loads((report / "report.json").read_text())["results"]
    assert set(results["1.0"]["policy_expected"]["share"]) <= {"big", "other-c"}
    assert results["1.0"]["policy"]["score"] == 1.0  # other-c is right on every translation prompt


def test_reproduce_refuses_sources_without_a_shared_model_set(tmp_path, capsys):
    first = write_jsonl(tmp_path / "first.jsonl", synthetic_jsonl_rows())
    second = write_jsonl(tmp_path / "second.jsonl", _second_source_rows())
    args = ["reproduce", "--data", str(first), str(second), "--out", str(tmp_path / "r"), *FAST]
    assert main(args) == 2
    assert "need every model on every row" in capsys.readouterr().err
