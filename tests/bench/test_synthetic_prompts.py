"""bench.route_load.synthetic_prompts: exact word-piece counts with either tokenizer the encoders load.

The fast tokenizer of the ONNX/OpenVINO backends (the CPU default is one of them) carries tokenizer.json's
truncation to 128 pieces; the generator counted pieces with it and looped forever at 256 tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from barp_sidecar.policy.encoder import EncoderSettings, model_path_for
from barp_sidecar.policy.minilm import WordPieceTokenizer
from bench.route_load import synthetic_prompts


def fast_tokenizer():
    return AutoTokenizer.from_pretrained(model_path_for(EncoderSettings()))


def torch_tokenizer():
    return WordPieceTokenizer(Path(model_path_for(EncoderSettings())) / "tokenizer.json")


@pytest.mark.parametrize("make", [fast_tokenizer, torch_tokenizer], ids=["fast", "torch"])
@pytest.mark.parametrize("tokens", [16, 200, 256])
def test_prompts_have_exactly_the_asked_word_pieces(make, tokens: int) -> None:
    tokenizer = make()
    counter = fast_tokenizer()
    prompts = synthetic_prompts(tokenizer, tokens, 20, seed=tokens)
    assert len(prompts) == len(set(prompts)) == 20
    pieces = counter(prompts, add_special_tokens=False, truncation=False)["input_ids"]
    assert [len(ids) for ids in pieces] == [tokens] * 20
    assert synthetic_prompts(make(), tokens, 20, seed=tokens) == prompts  # seeded


def test_the_encoders_own_tokenizer_keeps_its_truncation() -> None:
    tokenizer = fast_tokenizer()
    before = tokenizer._tokenizer.truncation
    synthetic_prompts(tokenizer, 256, 3, seed=0)
    assert before is not None and tokenizer._tokenizer.truncation == before


def test_more_tokens_than_whole_words_is_refused() -> None:
    with pytest.raises(ValueError, match="whole words"):
        synthetic_prompts(fast_tokenizer(), 10**6, 1, seed=0)
