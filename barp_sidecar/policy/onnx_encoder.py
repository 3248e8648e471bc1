"""The encoder h(x) on ONNX Runtime (CPU): the ``onnx`` (fp32) and ``onnx-int8`` backends.

Owns one ``onnxruntime.InferenceSession`` over a verified file from ``policy.onnx_export`` and the
tokenizer of the same model directory. Tokenisation and truncation are the torch encoder's
(``truncated_token_ids``), so both backends see identical ids; only the forward pass differs. fp32 computes
the same function as the torch encoder (max |Δ| ~2e-7 per component, tested); int8 approximates it (cosine
≈ 0.994 mean), which is why a policy must have been validated with the int8 file's sha256 to serve on it
(``EncoderIdentity.serving_problem``). Knows nothing about policies, routing or caching; torch is not
imported here.

Session settings (measured, docs/benchmarks.md): intra-op threads = ``policy.cpu_threads`` (0 = one per
physical core), one inter-op thread (sequential graph), no spinning intra-op threads (a spinning pool costs
10-30x on a shared CPU, as OMP_WAIT_POLICY=PASSIVE does for torch), the default CPU memory arena.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from barp_sidecar.policy.encoder import (
    BUILTIN_MODEL,
    BUILTIN_MODEL_ID,
    EncoderSettings,
    model_path_for,
    truncated_token_ids,
)
from barp_sidecar.policy.onnx_export import (
    INPUT_NAMES,
    OUTPUT_NAME,
    OnnxModel,
    OnnxModelError,
    OnnxRuntimeUnsupported,
)


class OnnxEncoder:
    """Sentence embeddings from an exported ONNX model. ``load()`` creates the session (seconds).

    Like the torch encoder, one inference thread owns it (DESIGN §5); a lock guards misuse.
    """

    def __init__(self, settings: EncoderSettings, model: OnnxModel, intra_op_threads: int = 0) -> None:
        if settings.device != "cpu":
            raise ValueError(f"the {model.backend} backend runs on the CPU only, not {settings.device!r}")
        self._settings = settings
        self._model = model
        self._threads = intra_op_threads
        self._session: Any = None
        self._tokenizer: Any = None
        self._dim = 0
        self._lock = threading.Lock()
        self._encoder_id = BUILTIN_MODEL_ID if settings.model == BUILTIN_MODEL else settings.model

    @property
    def settings(self) -> EncoderSettings:
        return self._settings

    @property
    def encoder_id(self) -> str:
        return self._encoder_id

    @property
    def backend(self) -> str:
        return self._model.backend

    @property
    def model_sha256(self) -> str:
        return self._model.sha256

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def dim(self) -> int:
        if self._session is None:
            raise RuntimeError("encoder not loaded: call load() first")
        return self._dim

    def load(self) -> OnnxEncoder:
        import onnxruntime
        from transformers import AutoTokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # warnings about unused initialisers would interleave with JSON logs
        try:
            session = onnxruntime.InferenceSession(
                str(self._model.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented classes
            raise OnnxRuntimeUnsupported(
                f"{self._model.path}: onnxruntime {onnxruntime.__version__} cannot run it "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        names = tuple(i.name for i in session.get_inputs())
        outputs = session.get_outputs()
        if names != INPUT_NAMES or len(outputs) != 1 or outputs[0].name != OUTPUT_NAME:
            raise OnnxModelError(f"{self._model.path}: inputs {names} / outputs are not an exported encoder")
        dim = outputs[0].shape[-1]
        if not isinstance(dim, int):
            raise OnnxModelError(f"{self._model.path}: the embedding dimension is not fixed ({dim!r})")
        self._tokenizer = AutoTokenizer.from_pretrained(model_path_for(self._settings))
        self._dim = dim
        self._session = session
        # One probe pass: an operator this onnxruntime lacks fails here, at start, not on a request.
        try:
            self.encode_token_ids([[1000, 1001]])
        except Exception as exc:
            self._session = None
            raise OnnxRuntimeUnsupported(
                f"{self._model.path}: onnxruntime {onnxruntime.__version__} failed a probe pass "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        return self

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        if self._tokenizer is None:
            raise RuntimeError("encoder not loaded: call load() first")
        return truncated_token_ids(self._tokenizer, texts, self._settings)

    def encode_token_ids(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        if self._session is None or self._tokenizer is None:
            raise RuntimeError("encoder not loaded: call load() first")
        if not token_ids:
            return np.zeros((0, self._dim), dtype=np.float32)
        tokenizer = self._tokenizer
        width = max(len(ids) for ids in token_ids) + 2
        input_ids = np.full((len(token_ids), width), tokenizer.pad_token_id, dtype=np.int64)
        attention = np.zeros((len(token_ids), width), dtype=np.int64)
        for row, ids in enumerate(token_ids):
            length = len(ids) + 2
            input_ids[row, 0] = tokenizer.cls_token_id
            input_ids[row, 1 : length - 1] = ids
            input_ids[row, length - 1] = tokenizer.sep_token_id
            attention[row, :length] = 1
        with self._lock:
            (embedding,) = self._session.run(
                [OUTPUT_NAME], {INPUT_NAMES[0]: input_ids, INPUT_NAMES[1]: attention}
            )
        # The graph normalises already; renormalising in float32 keeps ‖h‖ = 1 exactly as the torch path.
        embedding = np.asarray(embedding, dtype=np.float32)
        norms = np.linalg.norm(embedding, axis=1, keepdims=True)
        return embedding / np.maximum(norms, 1e-12)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        ids = self.token_ids(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            out[chunk] = self.encode_token_ids([ids[i] for i in chunk])
        return out
