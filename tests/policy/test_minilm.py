"""The plain-torch MiniLM (policy/minilm.py) gives sentence-transformers' embeddings and token ids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from barp_sidecar.policy.encoder import EncoderSettings, SentenceTransformerEncoder, builtin_model_path
from barp_sidecar.policy.minilm import MiniLMSentenceModel, load_minilm

pytestmark = pytest.mark.real_encoder
REPOSITORY = Path(__file__).resolve().parents[2]

PROMPTS = [
    "Write a Python function that merges two sorted lists.",
    "hi",
    "Explain quicksort in one paragraph. " * 60,  # longer than the 256-token budget: tail-truncated
    "Ünïcode façade — 東京, naïve café?",
]


def test_builtin_encoder_matches_sentence_transformers() -> None:
    ours = SentenceTransformerEncoder(EncoderSettings(device="cpu")).load()
    # The same files through sentence-transformers (a path, not the builtin name, takes that route).
    reference = SentenceTransformerEncoder(EncoderSettings(model=builtin_model_path(), device="cpu")).load()
    assert isinstance(ours._model, MiniLMSentenceModel)
    assert not isinstance(reference._model, MiniLMSentenceModel)
    assert ours.token_ids(PROMPTS) == reference.token_ids(PROMPTS)
    # One batch with padding (different lengths) and each prompt alone.
    batched, expected = ours.encode(PROMPTS), reference.encode(PROMPTS)
    assert ours.dim == reference.dim == 384
    np.testing.assert_allclose(batched, expected, atol=1e-5)
    for index, prompt in enumerate(PROMPTS):
        np.testing.assert_allclose(ours.encode([prompt])[0], expected[index], atol=1e-5)


def test_loading_the_builtin_encoder_does_not_import_sentence_transformers() -> None:
    code = (
        "import sys; from barp_sidecar.policy.encoder import SentenceTransformerEncoder, EncoderSettings; "
        "SentenceTransformerEncoder(EncoderSettings(device='cpu')).load().encode(['x']); "
        "print(sorted(m for m in ('sentence_transformers', 'transformers', 'sklearn') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"


def test_unsupported_configs_are_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match="absolute position"):
        MiniLMSentenceModel({"model_type": "roberta"})
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    with pytest.raises(ValueError, match="mean pooling"):
        load_minilm(tmp_path)
