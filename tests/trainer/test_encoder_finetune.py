"""The encoder fine-tuning research script on generated data with a tiny random BERT (no weights needed)."""

import json

import numpy as np
import pytest
import torch

from barp_sidecar.policy.minilm import MiniLMSentenceModel
from tests.trainer.conftest import write_jsonl
from trainer.offline import encoder_finetune as ef
from trainer.offline.datasets import load_table

TINY_BERT = {
    "model_type": "bert",
    "hidden_act": "gelu",
    "hidden_size": 16,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "vocab_size": 40,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}
WORDS = 30


class WordTokenizer:
    """Words "w<n>" → id n + 3; [PAD] 0, [CLS] 1, [SEP] 2 (what ``padded_batch`` needs)."""

    pad_token_id, cls_token_id, sep_token_id = 0, 1, 2

    def __call__(self, texts, **_):
        return {"input_ids": [[3 + int(word[1:]) for word in text.split()] for text in texts]}


def _rows(per_task=60, seed=0):
    """Two tasks; within each, model "a" is right iff the prompt holds w3 (every third prompt), else "b"."""
    rng = np.random.default_rng(seed)
    rows = []
    for task in ("t1", "t2"):
        for i in range(per_task):
            words = [f"w{w}" for w in rng.integers(4, WORDS, size=int(rng.integers(3, 9)))]
            signal = i % 3 == 0
            if signal:
                words[int(rng.integers(len(words)))] = "w3"
            rows.append(
                {
                    "prompt": " ".join(words),
                    "task": task,
                    "scores": {"a": float(signal), "b": float(not signal), "c": 0.3},
                    "costs": {"a": 0.001, "b": 0.001, "c": 0.0005},
                    "split": "test" if i % 4 == 0 else "train",
                }
            )
    return rows


def _model(num_models):
    torch.manual_seed(0)
    return ef.RoutingEncoder(MiniLMSentenceModel(TINY_BERT), num_models)


def _config(**overrides):
    settings = {
        "max_seq_length": 16,
        "batch_size": 8,
        "encoder_learning_rate": 1e-3,
        "head_learning_rate": 1e-2,
        "max_epochs": 4,
        "patience_checks": 4,
        "threads": 1,
    }
    return ef.FineTuneConfig(**{**settings, **overrides})


def _train_inputs(tmp_path):
    table = load_table(write_jsonl(tmp_path / "log.jsonl", _rows())).where(split="train")
    tokenizer = WordTokenizer()
    ids = [tokenizer([p])["input_ids"][0] for p in table.prompts]
    outcomes = ef.Outcomes(table.quality.astype(np.float32), table.observed_mask)
    tasks = np.asarray(table.tasks)
    fit, check = np.arange(0, len(table), 2)[: len(table) // 2], np.arange(1, len(table), 2)
    return tokenizer, ids, outcomes, tasks, fit, check


def test_fine_tuning_lowers_the_training_error_and_keeps_the_best_validation_state(tmp_path):
    tokenizer, ids, outcomes, tasks, fit, check = _train_inputs(tmp_path)
    model = _model(3)
    fit_ids = [ids[i] for i in fit]
    fit_outcomes = ef.Outcomes(outcomes.quality[fit], outcomes.observed[fit])

    def fit_error():
        _, predicted = ef.embed_and_predict(model, fit_ids, tokenizer)
        return float(ef.masked_squared_error(torch.from_numpy(predicted), fit_outcomes, np.arange(len(fit))))

    before = fit_error()
    result = ef.fine_tune(model, tokenizer, ids, outcomes, tasks, fit, check, _config())
    assert fit_error() < 0.7 * before
    # the model holds the state of the best validation check, step 0 (untrained) included
    _, quality_hat = ef.embed_and_predict(model, [ids[i] for i in check], tokenizer)
    check_outcomes = ef.Outcomes(outcomes.quality[check], outcomes.observed[check])
    assert ef.validation_score(quality_hat, check_outcomes, tasks[check]) == pytest.approx(
        result["best_validation_score"], abs=1e-6
    )
    scores = [h["validation_score"] for h in result["history"]]
    assert result["best_validation_score"] == max(scores) and result["history"][0]["step"] == 0
    assert result["steps"] <= 4 * len(
        ef.length_batches([len(ids[i]) for i in fit], 8, np.random.default_rng(0))
    )


def test_fine_tuning_stops_at_its_wall_time_and_after_patience(tmp_path):
    tokenizer, ids, outcomes, tasks, fit, check = _train_inputs(tmp_path)
    timed = ef.fine_tune(_model(3), tokenizer, ids, outcomes, tasks, fit, check, _config(max_train_s=1e-9))
    assert (timed["stop"], timed["steps"], len(timed["history"])) == ("max_train_s", 1, 2)
    # a learning rate of 0 never improves on step 0: stop after `patience_checks` checks
    frozen = _config(
        encoder_learning_rate=0.0, head_learning_rate=0.0, check_every_steps=1, patience_checks=3
    )
    patient = ef.fine_tune(_model(3), tokenizer, ids, outcomes, tasks, fit, check, frozen)
    assert (patient["stop"], patient["steps"], patient["best_step"]) == ("patience", 3, 0)


def test_length_batches_cover_every_row_once_with_similar_lengths():
    lengths = list(np.random.default_rng(1).integers(1, 100, size=1000))
    batches = ef.length_batches(lengths, 32, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert max(len(b) for b in batches) == 32
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in batches])
    assert spread < 15  # random batches of 32 would spread ~95


def test_run_trains_on_the_train_split_only_and_scores_every_router_on_test(tmp_path, monkeypatch):
    table = load_table(write_jsonl(tmp_path / "log.jsonl", _rows()))
    seen = {}
    real_fine_tune = ef.fine_tune

    def spy(model, tokenizer, token_ids, outcomes, tasks, fit_rows, check_rows, config, log=None):
        seen.update(
            rows=len(token_ids), fit=set(fit_rows.tolist()), check=set(check_rows.tolist()), tasks=tasks
        )
        return real_fine_tune(model, tokenizer, token_ids, outcomes, tasks, fit_rows, check_rows, config, log)

    monkeypatch.setattr(ef, "fine_tune", spy)
    result = ef.run(table, _model(3), WordTokenizer(), _config(), id_tasks=["t1"], ood_tasks=["t2"])
    train_rows = sum(split == "train" for split in table.splits)
    assert seen["rows"] == train_rows == result["rows"]["train"]
    assert not seen["fit"] & seen["check"] and len(seen["fit"] | seen["check"]) == train_rows
    assert {seen["tasks"][i] for i in seen["check"]} == {"t1", "t2"}  # stratified by task
    routers = result["routers"]
    assert set(routers) == {
        "per_task_best",
        "best_single",
        "ridge (frozen)",
        "head (fine-tuned)",
        "ridge (fine-tuned)",
    }
    assert result["rows"]["test"] == len(table) - train_rows == 30
    # hindsight per task: b is right on 10 of each task's 15 test rows; the per-prompt word signal is
    # learnable, so the fine-tuned routers beat that
    assert routers["per_task_best"]["score_w1"] == pytest.approx(2 / 3)
    print({name: r["score_w1"] for name, r in routers.items()})
    assert routers["head (fine-tuned)"]["score_w1"] > 0.8 and routers["ridge (fine-tuned)"]["score_w1"] > 0.8
    assert routers["best_single"]["ood_row_mean_w1"] == pytest.approx(2 / 3)
    assert routers["ridge (frozen)"]["id_task_mean_w1"] == routers["ridge (frozen)"]["per_task_w1"]["t1"]
    json.dumps(result)  # the result file is plain JSON
    assert "| head (fine-tuned) |" in ef.markdown(result)


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert ef.main(["--data", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "missing.jsonl" in capsys.readouterr().err and not out.exists()
    only_train = write_jsonl(tmp_path / "train.jsonl", [r for r in _rows() if r["split"] == "train"])
    assert ef.main(["--data", str(only_train), "--out", str(out), "--model-dir", str(tmp_path)]) == 2
    assert not out.exists()
    assert ef.main(["--data", str(only_train), "--out", str(out), "--max-seq-length", "4"]) == 2
    assert "max_seq_length" in capsys.readouterr().err and not out.exists()
