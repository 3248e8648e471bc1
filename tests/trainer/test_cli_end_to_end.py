"""The two commands on a generated JSONL log with the hash encoder: files, shapes, loadable checkpoint."""

import json

from barp_sidecar.policy.checkpoint import load_checkpoint
from tests.trainer.conftest import synthetic_jsonl_rows, write_jsonl
from trainer.cli import main

FAST = ["--encoder-model", "hash:64", "--steps", "60", "--batch-size", "32", "--no-progress"]


def test_offline_writes_a_loadable_checkpoint_recording_tau(tmp_path):
    data = write_jsonl(tmp_path / "log.jsonl", synthetic_jsonl_rows())
    out = tmp_path / "policy"
    args = ["offline", "--data", str(data), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), *FAST]
    assert main([*args, "--tasks", "arc_challenge", "winogrande", "--seed", "3"]) == 0
    policy = load_checkpoint(out)
    assert policy.manifest.arms == ("cheap-a", "cheap-b", "big")
    assert policy.manifest.encoder.encoder_id == "hash:64"
    assert policy.manifest.tau_usd > 0
    assert policy.manifest.training["tasks"] == ["arc_challenge", "winogrande"]
    assert policy.manifest.training["bandit_reveals"] == 60 * 32
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


def test_an_existing_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import trainer.offline.train_command as train_command

    def must_not_load(path):
        raise AssertionError("loaded the data although --out exists")

    monkeypatch.setattr(train_command, "load_table", must_not_load)
    (tmp_path / "policy").mkdir()
    args = ["offline", "--data", str(tmp_path / "log.jsonl"), "--out", str(tmp_path / "policy"), *FAST]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and "--force" in err


def test_bad_data_is_one_line_and_exit_2(tmp_path, capsys):
    args = ["offline", "--data", str(tmp_path / "nonexistent"), "--out", str(tmp_path / "policy"), *FAST]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("barp-trainer offline: ") and err.count("\n") == 1 and "no such file" in err
    assert not (tmp_path / "policy").exists()
