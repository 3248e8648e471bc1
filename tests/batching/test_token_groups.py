"""plan_length_groups: a partition, within budget, that keeps short prompts away from long ones."""

from __future__ import annotations

import random

import pytest

from barp_sidecar.batching.token_groups import plan_length_groups


def padded_cost(groups, lengths, overhead):
    return sum(overhead + len(g) * max(lengths[i] for i in g) for g in groups)


@pytest.mark.parametrize("seed", range(20))
def test_every_index_once_and_budget_respected(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.choice([4, 10, 18, 66, 130, 258]) for _ in range(rng.randint(1, 80))]
    groups = plan_length_groups(lengths, max_batch_tokens=1024)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        assert len(group) == 1 or len(group) * max(lengths[i] for i in group) <= 1024


def test_one_long_prompt_does_not_pad_the_short_ones() -> None:
    lengths = [18] * 31 + [258]
    groups = plan_length_groups(lengths, max_batch_tokens=8192)
    assert sorted(len(g) for g in groups) == [1, 31]
    assert [31] in groups


def test_equal_lengths_stay_in_one_pass() -> None:
    assert plan_length_groups([18] * 32, max_batch_tokens=8192) == [list(range(32))]


def test_budget_splits_equal_lengths() -> None:
    groups = plan_length_groups([100] * 10, max_batch_tokens=400)
    assert [len(g) for g in groups] == [4, 4, 2] or sorted(len(g) for g in groups) == [2, 4, 4]


def test_oversized_single_prompt_runs_alone() -> None:
    assert plan_length_groups([5000], max_batch_tokens=100) == [[0]]


def test_plan_is_optimal_for_small_inputs() -> None:
    rng = random.Random(3)
    for _ in range(30):
        lengths = sorted(rng.randint(3, 200) for _ in range(rng.randint(1, 7)))
        groups = plan_length_groups(lengths, max_batch_tokens=10_000, overhead_tokens=64)
        best = min(padded_cost(split, lengths, 64) for split in _contiguous_splits(list(range(len(lengths)))))
        assert padded_cost(groups, lengths, 64) == best


def _contiguous_splits(indices):
    if not indices:
        yield []
        return
    for cut in range(1, len(indices) + 1):
        for rest in _contiguous_splits(indices[cut:]):
            yield [indices[:cut], *rest]


def test_empty_input() -> None:
    assert plan_length_groups([], max_batch_tokens=10) == []
