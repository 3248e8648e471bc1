"""Encoder backends: which runtime computes h(x) — ``torch``, ``onnx`` (fp32), ``onnx-int8`` or ``openvino``.

Owns the choice (``auto`` -> onnx-int8 on the CPU for a policy validated with it, else ``openvino``, the
fastest fp32 runtime measured on the CPU; torch on CUDA), the default
ONNX directory, and the construction of a loaded encoder for a backend. Knows nothing about policies:
whether a policy may serve on a backend is ``EncoderIdentity.serving_problem``. The hashing test encoder
(``hash:<dim>``) has no weights and therefore no backends: it is built as is, whatever the backend says."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from barp_sidecar.policy.encoder import (
    Encoder,
    EncoderSettings,
    HashingEncoder,
    SentenceTransformerEncoder,
    model_path_for,
)
from barp_sidecar.policy.onnx_export import ONNX_BACKENDS, ensure_onnx_model
from barp_sidecar.policy.openvino_export import OPENVINO_BACKEND, ensure_openvino_model

BACKENDS = ("torch", *ONNX_BACKENDS, OPENVINO_BACKEND)
CPU_ONLY_BACKENDS = (*ONNX_BACKENDS, OPENVINO_BACKEND)
# What ``auto`` serves on the CPU when no validated int8 file applies: the same function as torch (any
# policy may serve on it), and the fastest such backend in the sidecar (docs/benchmarks.md, "Default").
CPU_FP32_BACKEND = OPENVINO_BACKEND


def resolve_backend(requested: str, device: str, int8_validated: bool = False) -> str:
    """``auto`` -> the fastest backend measured that decides as the policy was validated
    (docs/benchmarks.md, "Default"): on the CPU ``onnx-int8`` when the policy lists validated int8 files,
    else ``CPU_FP32_BACKEND`` (``openvino``: the same function as torch, 2.1-2.3x its throughput and
    1.2x onnx's in the sidecar); always ``torch`` on CUDA. Other names as given (validated)."""
    if requested == "auto":
        if device.startswith("cuda"):
            return "torch"
        return "onnx-int8" if int8_validated else CPU_FP32_BACKEND
    if requested not in BACKENDS:
        raise ValueError(f"must be 'auto' or one of {BACKENDS}, not {requested!r}")
    if requested in CPU_ONLY_BACKENDS and device != "cpu":
        raise ValueError(f"{requested!r} runs on the CPU only, but the encoder device is {device!r}")
    return requested


def default_onnx_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "barp-sidecar" / "onnx"


@dataclass(frozen=True)
class BackendChoice:
    """A resolved backend and where its ONNX and OpenVINO files live (ignored by torch)."""

    backend: str
    onnx_dir: Path
    intra_op_threads: int = 0


def load_backend_encoder(
    settings: EncoderSettings, choice: BackendChoice, on_export: Callable[[str], None] | None = None
) -> Encoder:
    """A loaded encoder for ``settings`` on ``choice.backend``.

    Raises OnnxModelError (file problems, missing operators), ValueError or OSError (model loading).
    """
    if settings.model.startswith("hash:"):
        return HashingEncoder(settings).load()
    if choice.backend == "torch":
        return SentenceTransformerEncoder(settings).load()
    source = Path(model_path_for(settings))
    if not source.is_dir():
        raise ValueError(
            f"the {choice.backend} backend exports from a local model directory; {source} is not one"
        )
    if choice.backend == OPENVINO_BACKEND:
        from barp_sidecar.policy.openvino_encoder import OpenVinoEncoder

        graph = ensure_openvino_model(source, choice.onnx_dir, on_export)
        return OpenVinoEncoder(settings, graph, choice.intra_op_threads).load()
    from barp_sidecar.policy.onnx_encoder import OnnxEncoder

    model = ensure_onnx_model(source, choice.onnx_dir, choice.backend, on_export)
    return OnnxEncoder(settings, model, choice.intra_op_threads).load()


def encoder_backend_identity(encoder: Encoder) -> tuple[str, str]:
    """(backend, model file sha256) of a loaded encoder; ("torch", "") for torch and hashing encoders."""
    backend = getattr(encoder, "backend", "torch")
    return str(backend), str(getattr(encoder, "model_sha256", ""))
