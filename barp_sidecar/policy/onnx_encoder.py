"""The encoder h(x) on ONNX Runtime (CPU): the ``onnx`` (fp32) and ``onnx-int8`` backends.

Owns one ``onnxruntime.InferenceSession`` over a verified file from ``policy.onnx_export``; tokenisation,
batching, locking and the start-time probe are ``policy.graph_encoder.GraphEncoder``'s. fp32 computes
the same function as the torch encoder (max |Δ| ~2e-7 per component, tested); int8 approximates it (cosine
≈ 0.994 mean), which is why a policy must have been validated with the int8 file's sha256 to serve on it
(``EncoderIdentity.serving_problem``). Knows nothing about policies, routing or caching; torch is not
imported here.

Session settings (measured, docs/benchmarks.md): intra-op threads = ``policy.cpu_threads`` (0 = one per
physical core), one inter-op thread (sequential graph), no spinning intra-op threads (a spinning pool costs
10-30x on a shared CPU, as OMP_WAIT_POLICY=PASSIVE does for torch), the default CPU memory arena.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from barp_sidecar.policy.encoder import EncoderSettings
from barp_sidecar.policy.graph_encoder import GraphEncoder
from barp_sidecar.policy.onnx_export import OnnxModel, OnnxModelError, OnnxRuntimeUnsupported
from barp_sidecar.policy.onnx_fused import INPUT_NAMES, OUTPUT_NAME


class OnnxEncoder(GraphEncoder):
    """Sentence embeddings from an exported ONNX model. ``load()`` creates the session (seconds)."""

    def __init__(self, settings: EncoderSettings, model: OnnxModel, intra_op_threads: int = 0) -> None:
        super().__init__(settings, model.backend, intra_op_threads)
        self._model = model
        self._session: Any = None

    @property
    def backend(self) -> str:
        return self._model.backend

    @property
    def model_sha256(self) -> str:
        return self._model.sha256

    @property
    def model_file(self) -> str:
        return str(self._model.path)

    def _runtime(self) -> str:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"

    def _open(self) -> int:
        import onnxruntime

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
                f"{self._model.path}: {self._runtime()} cannot run it ({type(exc).__name__}: {exc})"
            ) from exc
        names = tuple(i.name for i in session.get_inputs())
        outputs = session.get_outputs()
        if names != INPUT_NAMES or len(outputs) != 1 or outputs[0].name != OUTPUT_NAME:
            raise OnnxModelError(f"{self._model.path}: inputs {names} / outputs are not an exported encoder")
        dim = outputs[0].shape[-1]
        if not isinstance(dim, int):
            raise OnnxModelError(f"{self._model.path}: the embedding dimension is not fixed ({dim!r})")
        self._session = session
        return dim

    def _forward(self, input_ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        (embedding,) = self._session.run(
            [OUTPUT_NAME], {INPUT_NAMES[0]: input_ids, INPUT_NAMES[1]: attention}
        )
        return np.asarray(embedding)
