"""What the exported-graph encoders share (``onnx``, ``onnx-int8``, ``openvino``): tokenisation, batching,
one forward pass at a time, renormalisation, and the start-time checks.

Owns ``GraphEncoder``, the base of ``OnnxEncoder`` and ``OpenVinoEncoder``: the tokenizer of the model
directory with the torch encoder's tokenisation and truncation (``truncated_token_ids``), so every backend
sees identical ids and only the forward pass differs; padded batches; a lock (one inference thread owns an
encoder, DESIGN §5; the lock guards misuse); float32 renormalisation so ‖h‖ = 1 exactly as on the torch
path; and ``load()``: open the runtime (the subclass), load the tokenizer, then one probe pass, so a graph
the runtime cannot execute fails at start, not on a request. Knows no runtime, policy or cache.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from barp_sidecar.policy.encoder import (
    BUILTIN_MODEL,
    BUILTIN_MODEL_ID,
    EncoderSettings,
    encode_by_length,
    model_path_for,
    padded_batch,
    truncated_token_ids,
)
from barp_sidecar.policy.onnx_export import OnnxRuntimeUnsupported

PROBE_TOKEN_IDS = [[1000, 1001]]


class GraphEncoder(ABC):
    """Sentence embeddings from an exported graph on a CPU runtime. ``load()`` opens it (seconds).

    Subclasses say which backend and file they run (``backend``, ``model_sha256``, ``model_file``) and
    implement ``_open`` (start the runtime, check the graph's inputs and outputs, return the embedding
    dimension), ``_forward`` (one pass) and ``_runtime`` ("<package> <version>", for error messages).
    """

    def __init__(self, settings: EncoderSettings, backend: str, threads: int) -> None:
        if settings.device != "cpu":
            raise ValueError(f"the {backend} backend runs on the CPU only, not {settings.device!r}")
        self._settings = settings
        self._threads = threads
        self._loaded = False
        self._tokenizer: Any = None
        self._dim = 0
        self._lock = threading.Lock()
        self._encoder_id = BUILTIN_MODEL_ID if settings.model == BUILTIN_MODEL else settings.model

    # ------------------------------------------------------------------ what a subclass provides
    @property
    @abstractmethod
    def backend(self) -> str: ...

    @property
    @abstractmethod
    def model_sha256(self) -> str: ...

    @property
    @abstractmethod
    def model_file(self) -> str: ...

    @abstractmethod
    def _open(self) -> int: ...

    @abstractmethod
    def _forward(self, input_ids: np.ndarray, attention: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _runtime(self) -> str: ...

    # ------------------------------------------------------------------ shared
    @property
    def settings(self) -> EncoderSettings:
        return self._settings

    @property
    def encoder_id(self) -> str:
        return self._encoder_id

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def dim(self) -> int:
        if not self._loaded:
            raise RuntimeError("encoder not loaded: call load() first")
        return self._dim

    def load(self) -> GraphEncoder:
        from transformers import AutoTokenizer

        dim = self._open()
        self._tokenizer = AutoTokenizer.from_pretrained(model_path_for(self._settings))
        self._dim = dim
        self._loaded = True
        try:
            self.encode_token_ids(PROBE_TOKEN_IDS)
        except Exception as exc:
            self._loaded = False
            raise OnnxRuntimeUnsupported(
                f"{self.model_file}: {self._runtime()} failed a probe pass ({type(exc).__name__}: {exc})"
            ) from exc
        return self

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        if self._tokenizer is None:
            raise RuntimeError("encoder not loaded: call load() first")
        return truncated_token_ids(self._tokenizer, texts, self._settings)

    def encode_token_ids(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        if not self._loaded:
            raise RuntimeError("encoder not loaded: call load() first")
        if not token_ids:
            return np.zeros((0, self._dim), dtype=np.float32)
        input_ids, attention = padded_batch(token_ids, self._tokenizer)
        with self._lock:
            embedding = np.asarray(self._forward(input_ids, attention), dtype=np.float32)
        # The graph normalises already; renormalising in float32 keeps ‖h‖ = 1 exactly as the torch path.
        norms = np.linalg.norm(embedding, axis=1, keepdims=True)
        return embedding / np.maximum(norms, 1e-12)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return encode_by_length(self, texts, batch_size)
