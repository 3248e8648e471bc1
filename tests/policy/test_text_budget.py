"""Cutting by characters before tokenising keeps exactly the tokens the budget keeps (real tokenizer)."""

from __future__ import annotations

import random

import pytest

from barp_sidecar.policy.encoder import builtin_model_path, truncate_ids
from barp_sidecar.policy.text_budget import CHARS_PER_TOKEN_BOUND, cut_text_for_token_budget

BUDGET = 254
SIDES = ("head", "tail", "head_tail")


def random_text(rng: random.Random, words: int) -> str:
    vocabulary = [
        "the", "question", "antidisestablishmentarianism", "x", "42", "café", "naïve", "Paris,", "(a)",
        "def", "merge_sorted_lists(a,", "b):", "Ünïcödé", "über-long-hyphenated-compound-word", "—", "?",
    ]  # fmt: skip
    separators = [" ", " ", " ", "\n", "\t", "  "]
    return "".join(rng.choice(vocabulary) + rng.choice(separators) for _ in range(words))


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_model_path())


def test_short_texts_are_returned_unchanged() -> None:
    text = "a" * (BUDGET * CHARS_PER_TOKEN_BOUND)
    for side in SIDES:
        assert cut_text_for_token_budget(text, BUDGET, side) is text


@pytest.mark.parametrize("side", SIDES)
def test_the_cut_keeps_exactly_the_budgeted_tokens(tokenizer, side: str) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    for words in (10, 600, 1_000, 2_000, 5_000, 40_000):
        text = random_text(rng, words)
        cut = cut_text_for_token_budget(text, BUDGET, side)
        full_ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        cut_ids = tokenizer(cut, add_special_tokens=False, verbose=False)["input_ids"]
        assert truncate_ids(cut_ids, BUDGET, side) == truncate_ids(full_ids, BUDGET, side), (side, words)
        assert len(cut) <= 2 * BUDGET * CHARS_PER_TOKEN_BOUND + 1


def test_a_text_without_whitespace_is_cut_not_emptied() -> None:
    text = "x" * 1_000_000
    for side in ("head", "tail"):
        assert cut_text_for_token_budget(text, BUDGET, side) == "x" * (BUDGET * CHARS_PER_TOKEN_BOUND)
    with pytest.raises(ValueError, match="side"):
        cut_text_for_token_budget(text, BUDGET, "middle")
