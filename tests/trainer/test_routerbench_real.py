"""Checks on the real RouterBench subset (``../shared/data/routerbench``); skipped when it is absent."""

from pathlib import Path

import numpy as np
import pytest

from trainer.offline.datasets import load_table

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "routerbench"

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} not present"),
]


@pytest.fixture(scope="module")
def table():
    return load_table(DATA)


def test_rows_tasks_and_skipped_blank_scores(table):
    assert len(table.models) == 11
    assert table.task_names == ("arc_challenge", "mbpp", "winogrande")
    assert table.skipped_rows == 28  # RouterBench's blank ARC scores
    assert len(table.where(split="test")) == 945 and len(table.where(split="train")) == 2205


def test_gpt4_test_score_matches_the_readme(table):
    test = table.where(split="test")
    gpt4 = test.models.index("gpt-4-1106-preview")
    tasks = np.asarray(test.tasks)
    per_task = [test.quality[tasks == t, gpt4].mean() for t in test.task_names]
    assert np.mean(per_task) == pytest.approx(0.833, abs=0.001)


@pytest.mark.real_encoder
def test_head_truncation_collapses_five_shot_prompts_and_tail_does_not(table):
    from barp_sidecar.policy.encoder import EncoderSettings, build_encoder

    arc = [p for p, t in zip(table.prompts, table.tasks, strict=True) if t == "arc_challenge"][:2]
    vectors = {}
    for side in ("head", "tail"):
        encoder = build_encoder(EncoderSettings(truncation=side, device="cpu")).load()
        vectors[side] = encoder.encode(arc)
    assert float(vectors["head"][0] @ vectors["head"][1]) > 0.9999
    assert float(vectors["tail"][0] @ vectors["tail"][1]) < 0.99
