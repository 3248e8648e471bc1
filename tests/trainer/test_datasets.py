import csv
import pickle

import numpy as np
import pytest

from barp_sidecar.errors import DataError
from tests.trainer.conftest import write_jsonl
from trainer.offline.datasets import load_jsonl, load_routerbench_csv_dir, load_routerbench_pickle, load_table

MODELS = ("m-small", "m-large")


def _rb_row(i, prompt, task="arc-challenge", small="1.0", large="0.0"):
    return {
        "": str(i),
        "sample_id": f"{task}.{i}",
        "prompt": repr([prompt]),
        "eval_name": task,
        "m-small": small,
        "m-large": large,
        "m-small|model_response": "['A']",
        "m-large|model_response": "['B']",
        "m-small|total_cost": "0.0001",
        "m-large|total_cost": "0.002",
        "oracle_model_to_route_to": "m-small",
    }


def _write_csv(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_routerbench_csv_parses_list_prompts_and_skips_blank_scores(tmp_path):
    _write_csv(
        tmp_path / "arc_challenge_train.csv",
        [_rb_row(0, "Q: multi\nline?"), _rb_row(1, "blank", small=""), _rb_row(2, "ok", large="1.0")],
    )
    _write_csv(tmp_path / "arc_challenge_test.csv", [_rb_row(3, "test q")])
    table = load_routerbench_csv_dir(tmp_path)
    assert table.models == MODELS
    assert len(table) == 3
    assert table.skipped_rows == 1
    assert table.prompts[1] == "Q: multi\nline?"  # files load sorted: test before train
    assert table.tasks == ("arc_challenge",) * 3
    assert table.splits == ("test", "train", "train")
    assert np.allclose(table.cost_usd[:, 1], 0.002)
    assert len(table.where(split="train", tasks=["arc-challenge"])) == 2


@pytest.mark.parametrize(("value", "message"), [("high", "not a number"), ("1.5", r"outside \[0, 1\]")])
def test_routerbench_csv_bad_score_names_file_and_line(tmp_path, value, message):
    _write_csv(tmp_path / "x_train.csv", [_rb_row(0, "fine"), _rb_row(1, "bad", large=value)])
    with pytest.raises(DataError, match=rf"x_train.csv:3: score of 'm-large' .*{message}"):
        load_routerbench_csv_dir(tmp_path)


def test_jsonl_loader_and_hash_split(tmp_path):
    rows = [
        {"prompt": f"p{i}", "task": "t", "scores": {"a": 1, "b": 0.5}, "costs": {"a": 0.1, "b": 0.01}}
        for i in range(50)
    ]
    rows[0]["split"] = "test"
    table = load_table(write_jsonl(tmp_path / "log.jsonl", rows))
    assert table.models == ("a", "b") and len(table) == 50
    assert table.splits[0] == "test"
    assert {"train", "test"} <= set(table.splits)
    assert table == table and load_jsonl(tmp_path / "log.jsonl").splits == table.splits  # deterministic


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "task": "t", "scores": {"a": 1.2, "b": 0}, "costs": {"a": 0, "b": 0}}, "outside"),
        (
            {"prompt": "p", "task": "t", "scores": {"a": "x", "b": 0}, "costs": {"a": 0, "b": 0}},
            "not a number",
        ),
        ({"prompt": "p", "task": "t", "scores": {"a": None, "b": 0}, "costs": {"a": 0, "b": 0}}, "missing"),
        (
            {"prompt": "p", "task": "t", "scores": {"a": 1, "b": 0}, "costs": {"a": 0}},
            r"'scores' and 'costs' name different models \(score only \['b'\]",
        ),
        (
            {
                "prompt": "p",
                "task": "t",
                "scores": {"claude-2": 1, "claude-v2": 0},
                "costs": {"claude-2": 0, "claude-v2": 0},
            },
            "two keys name the model 'claude-v2'",
        ),
        ({"prompt": "p", "task": "t", "scores": {"a": 1, "b": 0}, "costs": {"a": -1, "b": 0}}, "negative"),
        ({"prompt": "p", "scores": {"a": 1, "b": 0}, "costs": {"a": 0, "b": 0}}, "missing 'task'"),
    ],
)
def test_jsonl_bad_rows_raise_with_file_and_line(tmp_path, row, message):
    good = {"prompt": "p", "task": "t", "scores": {"a": 1, "b": 0}, "costs": {"a": 0.1, "b": 0.01}}
    path = write_jsonl(tmp_path / "log.jsonl", [good, row])
    with pytest.raises(DataError, match=rf"log.jsonl:2: .*{message}"):
        load_jsonl(path)


def _pickle_rows():
    rows = [_rb_row(i, f"prompt {i}", task="mbpp") for i in range(20)]
    for row in rows:
        row["m-small"], row["m-large"] = float(row["m-small"]), float(row["m-large"])
        row["m-small|total_cost"], row["m-large|total_cost"] = 0.0001, 0.002
    rows[3]["m-large"] = float("nan")  # RouterBench's blank score
    return rows


def test_pickle_list_of_dicts_and_dict_of_lists(tmp_path):
    rows = _pickle_rows()
    list_path = tmp_path / "routerbench_5shot.pkl"
    list_path.write_bytes(pickle.dumps(rows))
    table = load_routerbench_pickle(list_path)
    assert len(table) == 19 and table.skipped_rows == 1
    assert table.prompts[0] == "prompt 0" and table.tasks[0] == "mbpp"
    columns = {key: [r[key] for r in rows] for key in rows[0]}
    dict_path = tmp_path / "columns.pkl"
    dict_path.write_bytes(pickle.dumps(columns))
    other = load_table(dict_path)
    assert other.prompts == table.prompts and other.splits == table.splits
    assert np.array_equal(other.quality, table.quality)


class DataFrameLike:
    """The slice of the pandas DataFrame API the loader uses (pandas is not a dependency of the suite)."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows
        self.columns = list(rows[0])

    def reset_index(self, drop: bool) -> "DataFrameLike":
        assert drop  # RouterBench's index is a row number, never a column
        return self

    def to_dict(self, orient: str) -> list[dict]:
        assert orient == "records"
        return self.rows


def test_pickle_of_a_dataframe(tmp_path):
    path = tmp_path / "routerbench_0shot.pkl"
    path.write_bytes(pickle.dumps(DataFrameLike(_pickle_rows())))
    table = load_routerbench_pickle(path)
    assert len(table) == 19 and table.skipped_rows == 1


def test_pickle_of_something_else_is_a_data_error(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps(42))
    with pytest.raises(DataError, match="expected a DataFrame"):
        load_table(path)


def test_unknown_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_table(tmp_path / "nope.jsonl")


def test_jsonl_rows_with_different_models_leave_absent_models_unobserved(tmp_path):
    rows = [
        {"prompt": "p0", "task": "t", "scores": {"a": 1, "b": 0.5}, "costs": {"a": 0.1, "b": 0.01}},
        {"prompt": "p1", "task": "t", "scores": {"b": 0.25, "c": 1}, "costs": {"b": 0.02, "c": 0.3}},
    ]
    table = load_jsonl(write_jsonl(tmp_path / "log.jsonl", rows))
    assert table.models == ("a", "b", "c")
    assert table.observed_mask.tolist() == [[True, True, False], [False, True, True]]
    assert not table.fully_observed
    assert table.quality[1].tolist() == [0.0, 0.25, 1.0] and table.cost_usd[1, 2] == 0.3
    assert table.select([1]).observed_mask.tolist() == [[False, True, True]]


def test_loaders_canonicalise_model_aliases(tmp_path):
    rows = [
        {
            "prompt": "p",
            "task": "alpacaeval/koala",
            "scores": {"gpt4_1106_preview": 0.5, "claude-2": 0.2},
            "costs": {"gpt4_1106_preview": 0.01, "claude-2": 0.007},
        }
    ]
    table = load_jsonl(write_jsonl(tmp_path / "log.jsonl", rows))
    assert table.models == ("gpt-4-1106-preview", "claude-v2") and table.fully_observed
    assert table.tasks == ("alpacaeval/koala",)
    csv_row = _rb_row(0, "q")
    renamed = {k.replace("m-large", "gpt4_1106_preview"): v for k, v in csv_row.items()}
    _write_csv(tmp_path / "arc_challenge_train.csv", [renamed])
    assert load_routerbench_csv_dir(tmp_path).models == ("m-small", "gpt-4-1106-preview")
