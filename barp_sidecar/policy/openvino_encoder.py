"""The encoder h(x) on OpenVINO (CPU, fp32): the ``openvino`` backend.

Owns one compiled OpenVINO model over a verified IR from ``policy.openvino_export``, its infer request and
the tokenizer of the same model directory. Tokenisation and truncation are the torch encoder's
(``truncated_token_ids``), so every backend sees identical ids; only the forward pass differs. It computes
the torch encoder's function (max |Δ| ~2e-7 per component, tested), so any policy may serve on it
(``EncoderIdentity.serving_problem``). Knows nothing about policies, routing or caching; openvino is
imported at ``load()`` (without its telemetry: ``import_openvino``), torch not at
all.

Compile settings: ``INFERENCE_PRECISION_HINT`` f32 (without it OpenVINO may run bf16 on CPUs that have
it), ``PERFORMANCE_HINT`` LATENCY (one stream: the sidecar runs one forward pass at a time),
``INFERENCE_NUM_THREADS`` = ``policy.cpu_threads`` (0 = the CPU plugin's own choice).
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
    encode_by_length,
    model_path_for,
    padded_batch,
    truncated_token_ids,
)
from barp_sidecar.policy.onnx_export import OnnxModelError, OnnxRuntimeUnsupported
from barp_sidecar.policy.onnx_fused import INPUT_NAMES, OUTPUT_NAME
from barp_sidecar.policy.openvino_export import FP32_CONFIG, OPENVINO_BACKEND, OpenVinoModel, import_openvino


class OpenVinoEncoder:
    """Sentence embeddings from a converted OpenVINO IR. ``load()`` compiles it (seconds).

    Like the torch encoder, one inference thread owns it (DESIGN §5); a lock guards misuse.
    """

    def __init__(self, settings: EncoderSettings, model: OpenVinoModel, threads: int = 0) -> None:
        if settings.device != "cpu":
            raise ValueError(f"the {OPENVINO_BACKEND} backend runs on the CPU only, not {settings.device!r}")
        self._settings = settings
        self._model = model
        self._threads = threads
        self._request: Any = None
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
        return OPENVINO_BACKEND

    @property
    def model_sha256(self) -> str:
        return self._model.sha256

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def dim(self) -> int:
        if self._request is None:
            raise RuntimeError("encoder not loaded: call load() first")
        return self._dim

    def load(self) -> OpenVinoEncoder:
        from transformers import AutoTokenizer

        openvino = import_openvino()
        path = self._model.graph_path
        config: dict[str, Any] = {**FP32_CONFIG, "PERFORMANCE_HINT": "LATENCY"}
        if self._threads > 0:
            config["INFERENCE_NUM_THREADS"] = self._threads
        try:
            compiled = openvino.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError (and its own classes) for any failure
            raise OnnxRuntimeUnsupported(
                f"{path}: openvino {openvino.__version__} cannot run it ({type(exc).__name__}: {exc})"
            ) from exc
        names = [sorted(port.get_names()) for port in compiled.inputs]
        outputs = compiled.outputs
        inputs_match = len(names) == len(INPUT_NAMES) and all(
            name in port_names for name, port_names in zip(INPUT_NAMES, names, strict=False)
        )
        if not inputs_match or len(outputs) != 1 or OUTPUT_NAME not in outputs[0].get_names():
            raise OnnxModelError(f"{path}: inputs {names} / outputs are not a converted encoder")
        dim = outputs[0].get_partial_shape()[-1]
        if not dim.is_static:
            raise OnnxModelError(f"{path}: the embedding dimension is not fixed ({dim})")
        self._tokenizer = AutoTokenizer.from_pretrained(model_path_for(self._settings))
        self._dim = dim.get_length()
        self._request = compiled.create_infer_request()
        # One probe pass: a graph this OpenVINO cannot execute fails here, at start, not on a request.
        try:
            self.encode_token_ids([[1000, 1001]])
        except Exception as exc:
            self._request = None
            raise OnnxRuntimeUnsupported(
                f"{path}: openvino {openvino.__version__} failed a probe pass ({type(exc).__name__}: {exc})"
            ) from exc
        return self

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        if self._tokenizer is None:
            raise RuntimeError("encoder not loaded: call load() first")
        return truncated_token_ids(self._tokenizer, texts, self._settings)

    def encode_token_ids(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        if self._request is None or self._tokenizer is None:
            raise RuntimeError("encoder not loaded: call load() first")
        if not token_ids:
            return np.zeros((0, self._dim), dtype=np.float32)
        input_ids, attention = padded_batch(token_ids, self._tokenizer)
        with self._lock:
            # infer() copies the output out of the request's tensor, so the next call cannot overwrite it.
            results = self._request.infer({INPUT_NAMES[0]: input_ids, INPUT_NAMES[1]: attention})
            embedding = np.asarray(results[OUTPUT_NAME], dtype=np.float32)
        # The graph normalises already; renormalising in float32 keeps ‖h‖ = 1 exactly as the torch path.
        norms = np.linalg.norm(embedding, axis=1, keepdims=True)
        return embedding / np.maximum(norms, 1e-12)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return encode_by_length(self, texts, batch_size)
