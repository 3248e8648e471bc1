"""``barp-trainer evaluate`` on generated logs: the pinned report.json keys, masks, pairs and bad input."""

import argparse
import json
import re

import numpy as np
import pytest

from barp_sidecar.decide import add_arguments as add_decide_arguments
from barp_sidecar.decide import decide
from barp_sidecar.domain import ExplorationMode
from barp_sidecar.policy.checkpoint import load_checkpoint
from barp_sidecar.routing.exploration import choose_model
from tests.trainer.conftest import synthetic_jsonl_rows, write_jsonl
from trainer.cli import main
from trainer.offline.evaluate_command import PolicyScorer
from trainer.offline.features import embed_prompts

FAST = ["--encoder-model", "hash:64", "--steps", "120", "--batch-size", "32", "--no-progress"]
MODELS = ("cheap-a", "cheap-b", "big")
ROUTER_FIELDS = {"score", "score_task_mean", "cost_usd", "reward", "share"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(log path, policy dir, cache dir): a small policy trained on the log's train split."""
    root = tmp_path_factory.mktemp("evaluate")
    log = write_jsonl(root / "log.jsonl", synthetic_jsonl_rows())
    policy, cache = root / "policy", root / "cache"
    assert main(["offline", "--data", str(log), "--out", str(policy), "--cache-dir", str(cache), *FAST]) == 0
    return log, policy, cache


def _evaluate(trained, out, *extra):
    log, policy, cache = trained
    args = ["evaluate", "--policy", str(policy), "--data", str(log), "--out", str(out)]
    return main([*args, "--cache-dir", str(cache), "--no-progress", *extra])


def test_report_json_has_the_documented_keys_and_files(trained, tmp_path):
    out = tmp_path / "eval"
    assert _evaluate(trained, out) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["results"]) == [f"{i / 10:.1f}" for i in range(11)]
    assert report["data"]["split"] == "test" and report["data"]["rows"] == 30
    for key, routers in report["results"].items():
        for router in ("policy", "policy_expected", "per_task_best", "best_single", "oracle"):
            assert ROUTER_FIELDS <= set(routers[router]), (key, router)
        for model in MODELS:
            assert ROUTER_FIELDS <= set(routers[f"model:{model}"])
            assert routers[f"model:{model}"]["share"] == {model: 1.0}
        assert sum(routers["policy_expected"]["share"].values()) == pytest.approx(1.0, abs=1e-4)
        assert routers["oracle"]["reward"] >= max(routers[f"model:{m}"]["reward"] for m in MODELS) - 1e-12
        assert routers["oracle"]["reward"] >= routers["per_task_best"]["reward"] - 1e-12
        assert routers["per_task_best"]["reward"] >= routers["best_single"]["reward"] - 1e-12
    # The generated log: each task has one right cheap model, so one model per task scores 100 %.
    assert report["results"]["1.0"]["per_task_best"]["score"] == 1.0
    (pair,) = report["pairs"]
    assert (pair["strong"], pair["cheap"]) == ("big", "cheap-a")
    assert {"apgr", "cpt50", "cpt80"} <= set(pair) and 0.0 <= pair["cpt50"] <= pair["cpt80"] <= 1.0
    assert pair["oracle_ranking"]["apgr"] >= pair["apgr"] - 1e-9
    markdown = (out / "report.md").read_text()
    assert "| 1.0 | per_task_best | 100.0 |" in markdown and "APGR" in markdown
    assert (out / "quality_vs_cost.png").stat().st_size > 10_000


def test_models_mask_restricts_every_router_and_sets_the_pair(trained, tmp_path):
    out = tmp_path / "eval"
    assert _evaluate(trained, out, "--models", "big", "cheap-b", "--quality-weights", "0.5", "1") == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["results"]) == ["0.5", "1.0"]
    for routers in report["results"].values():
        for name, entry in routers.items():
            assert set(entry["share"]) <= {"big", "cheap-b"}, name
        assert "model:cheap-a" not in routers
    assert [(p["strong"], p["cheap"]) for p in report["pairs"]] == [("big", "cheap-b")]


def test_greedy_decisions_equal_the_sidecar_decide_command(trained):
    """Same masked probabilities and greedy choice as ``barp-sidecar decide --allowed-model``."""
    _, policy_dir, cache = trained
    policy = load_checkpoint(policy_dir)
    prompts = [r["prompt"] for r in synthetic_jsonl_rows()[:12]]
    settings = policy.manifest.encoder.settings("hash:64", "cpu")
    embeddings, _, _ = embed_prompts(prompts, settings, cache, show_progress=False)
    allowed = np.tile([True, False, True], (len(prompts), 1))
    scorer = PolicyScorer(policy.network, embeddings)
    probabilities = scorer.probabilities(0.7, allowed)
    choices = PolicyScorer.greedy(probabilities, allowed)
    for prompt, p, choice in zip(prompts, probabilities, choices, strict=True):
        # Parsed by the command's own parser, so the test follows its flags.
        parser = argparse.ArgumentParser()
        add_decide_arguments(parser)
        args = parser.parse_args(
            [
                prompt,
                "--quality-weight",
                "0.7",
                "--policy",
                str(policy_dir),
                "--encoder-model",
                "hash:64",
                "--allowed-model",
                "cheap-a",
                "--allowed-model",
                "big",
            ]
        )
        decision = decide(args)
        assert decision["model"] == MODELS[choice]
        assert [decision["probabilities"][m] for m in MODELS] == pytest.approx(p.tolist(), abs=1e-5)
        assert p[1] == 0.0


def _bad_rows(kind):
    rows = synthetic_jsonl_rows()
    if kind == "score":
        rows[5]["scores"]["big"] = 1.5
    elif kind == "disjoint":
        for row in rows:
            row["scores"] = {"other-x": 1.0}
            row["costs"] = {"other-x": 0.001}
    elif kind == "empty-split":
        for row in rows:
            row["split"] = "train"
    return rows


@pytest.mark.parametrize(
    ("kind", "extra", "message"),
    [
        ("score", (), r"log.jsonl:6: score of 'big' is 1.5, outside \[0, 1\]"),
        ("disjoint", (), r"shares no model with the policy \(log models \['other-x'\]"),
        ("empty-split", (), r"the 'test' split has no rows"),
        ("ok", ("--models", "big", "gpt-9"), r"--models: 1 unknown model\(s\) \['gpt-9'\]"),
        ("ok", ("--quality-weights", "1.5"), r"--quality-weights: \[1.5\] outside \[0, 1\]"),
    ],
)
def test_bad_input_exits_2_naming_the_problem_and_writes_nothing(
    trained, tmp_path, capsys, kind, extra, message
):
    _, policy, cache = trained
    log = write_jsonl(tmp_path / "log.jsonl", _bad_rows(kind))
    out = tmp_path / "eval"
    args = ["evaluate", "--policy", str(policy), "--data", str(log), "--out", str(out), "--no-progress"]
    assert main([*args, "--cache-dir", str(cache), *extra]) == 2
    error = capsys.readouterr().err
    assert error.startswith("barp-trainer evaluate: ") and len(error.strip().splitlines()) == 1
    assert re.search(message, error), error
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "log.jsonl"] == []


def test_existing_out_needs_force(trained, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _evaluate(trained, out) == 2
    assert "pass --force" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert _evaluate(trained, out, "--force") == 0
    assert not (out / "keep.txt").exists() and (out / "report.json").exists()


def _doc_row(docs, key):
    line = next(line for line in docs.splitlines() if line.startswith(f"| {key} |"))
    return set(re.findall(r"`([a-z0-9_<>:]+)`", line.split("|")[2]))


def test_docs_list_every_report_json_key(trained, tmp_path):
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    out = tmp_path / "eval"
    assert _evaluate(trained, out) == 0
    report = json.loads((out / "report.json").read_text())
    top = {line.split("|")[1].strip(" `") for line in docs.splitlines() if line.startswith("| `")}
    assert set(report) <= top
    assert set(report["policy"]) <= _doc_row(docs, "`policy`")
    assert set(report["data"]) <= _doc_row(docs, "`data`")
    routers = {r if not r.startswith("model:") else "model:<name>" for r in report["results"]["0.5"]}
    assert routers == _doc_row(docs, "router names")
    assert set(report["results"]["0.5"]["policy"]) <= _doc_row(docs, "router entry")
    assert set(report["pairs"][0]) <= _doc_row(docs, "`pairs`")


def test_leave_one_task_out_harness_reports_every_task(tmp_path):
    from trainer.offline.leave_one_task_out import main as loto

    log = write_jsonl(tmp_path / "log.jsonl", synthetic_jsonl_rows())
    args = ["--data", str(log), "--out", str(tmp_path / "loto"), "--cache-dir", str(tmp_path / "cache")]
    assert loto([*args, "--encoder-model", "hash:64", "--steps", "20", "--batch-size", "16"]) == 0
    summary = json.loads((tmp_path / "loto" / "loto.json").read_text())
    assert [row["task"] for row in summary["tasks"]] == ["arc_challenge", "mbpp", "winogrande"]
    for row in summary["tasks"]:
        assert row["test_rows"] == 10 and row["train_rows"] == 60  # the other two tasks' train rows
        assert 0.0 <= row["apgr"] <= row["apgr_oracle_ranking"] + 1e-9
    assert summary["mean_apgr"] == pytest.approx(np.mean([row["apgr"] for row in summary["tasks"]]))


def test_vectorised_greedy_equals_choose_model_row_by_row():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(4), size=300)
    probabilities[:50, 1] = probabilities[:50, 2]  # ties: lowest index wins in both
    probabilities[50:60] = 0.0  # every probability underflowed
    allowed = rng.uniform(size=(300, 4)) < 0.6
    allowed[~allowed.any(axis=1), 3] = True
    probabilities = np.where(allowed, probabilities, 0.0)
    rng_unused = np.random.default_rng(0)  # GREEDY never draws from it
    expected = [
        choose_model(p, a, ExplorationMode.GREEDY, 0.0, rng_unused)[0]
        for p, a in zip(probabilities, allowed, strict=True)
    ]
    assert PolicyScorer.greedy(probabilities, allowed).tolist() == expected
