"""The encoder h(x) on OpenVINO (CPU, fp32): the ``openvino`` backend.

Owns one compiled OpenVINO model over a verified IR from ``policy.openvino_export`` and its infer request;
tokenisation, batching, locking and the start-time probe are ``policy.graph_encoder.GraphEncoder``'s. It
computes the torch encoder's function (max |Δ| ~2e-7 per component, tested), so any policy may serve on it
(``EncoderIdentity.serving_problem``). Knows nothing about policies, routing or caching; openvino is
imported at ``load()`` (without its telemetry: ``import_openvino``), torch not at all.

Compile settings: ``INFERENCE_PRECISION_HINT`` f32 (without it OpenVINO may run bf16 on CPUs that have
it), ``PERFORMANCE_HINT`` LATENCY (one stream: the sidecar runs one forward pass at a time),
``INFERENCE_NUM_THREADS`` = ``policy.cpu_threads`` (0 = the CPU plugin's own choice).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from barp_sidecar.policy.encoder import EncoderSettings
from barp_sidecar.policy.graph_encoder import GraphEncoder
from barp_sidecar.policy.onnx_export import OnnxModelError, OnnxRuntimeUnsupported
from barp_sidecar.policy.onnx_fused import INPUT_NAMES, OUTPUT_NAME
from barp_sidecar.policy.openvino_export import FP32_CONFIG, OPENVINO_BACKEND, OpenVinoModel, import_openvino


class OpenVinoEncoder(GraphEncoder):
    """Sentence embeddings from a converted OpenVINO IR. ``load()`` compiles it (seconds)."""

    def __init__(self, settings: EncoderSettings, model: OpenVinoModel, threads: int = 0) -> None:
        super().__init__(settings, OPENVINO_BACKEND, threads)
        self._model = model
        self._request: Any = None

    @property
    def backend(self) -> str:
        return OPENVINO_BACKEND

    @property
    def model_sha256(self) -> str:
        return self._model.sha256

    @property
    def model_file(self) -> str:
        return str(self._model.graph_path)

    def _runtime(self) -> str:
        return f"openvino {import_openvino().__version__}"

    def _open(self) -> int:
        openvino = import_openvino()
        path = self._model.graph_path
        config: dict[str, Any] = {**FP32_CONFIG, "PERFORMANCE_HINT": "LATENCY"}
        if self._threads > 0:
            config["INFERENCE_NUM_THREADS"] = self._threads
        try:
            compiled = openvino.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError (and its own classes) for any failure
            raise OnnxRuntimeUnsupported(
                f"{path}: {self._runtime()} cannot run it ({type(exc).__name__}: {exc})"
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
        self._request = compiled.create_infer_request()
        return int(dim.get_length())

    def _forward(self, input_ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        # infer() copies the output out of the request's tensor, so the next call cannot overwrite it.
        results = self._request.infer({INPUT_NAMES[0]: input_ids, INPUT_NAMES[1]: attention})
        return np.asarray(results[OUTPUT_NAME])
