"""The fused fp32 ONNX graph of a BERT sentence encoder: export, ONNX Runtime's BERT fusion, verification.

Owns turning a sentence-transformers BERT directory (mean pooling; what ``policy.minilm`` loads) into one
ONNX file whose transformer runs as ONNX Runtime's fused CPU kernels (EmbedLayerNormalization, one
Attention per layer, SkipLayerNormalization, BiasGelu), plus mean pooling and L2 normalisation, with
dynamic batch and length. Knows nothing about caching, hashing or quantisation (``policy.onnx_export``).

Why this route: ``torch.onnx.export(dynamo=True)`` of the same model gives a graph that ONNX Runtime's
transformer optimiser fuses only partly (BiasGelu, LayerNorm), and that graph was no faster than torch
(docs/benchmarks.md). ``FusableMiniLM`` writes attention in the operator pattern the optimiser recognises
(Q·Kᵀ/√d + additive mask, softmax, ·V), the TorchScript exporter traces it, and
``onnxruntime.transformers.optimizer`` fuses it. The TorchScript exporter once produced wrong outputs
for sentence-transformers' own module (../shared/docs/MEASUREMENTS.md), so every export is checked here
against the torch model on padded probe batches and refused unless the largest difference is at most
``VERIFY_MAX_ABS_DIFF`` per component, and refused unless every layer was fused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 14
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"
VERIFY_MAX_ABS_DIFF = 1e-5
# Masked attention scores get this added (as in BERT's own ONNX graphs); exp(-10000) is 0 in float32.
MASK_ADDEND = -10000.0


class FusedExportError(Exception):
    """The model could not be exported, fused or verified. The message names the file."""


def fusable_module(model: Any) -> Any:
    """``MiniLMSentenceModel``'s computation in the operator pattern ONNX Runtime fuses (same weights).

    Also what ``policy.openvino_export`` converts: OpenVINO converts it exactly (max |Δ| ~2e-7)."""
    import torch
    from torch.nn import functional

    class FusableMiniLM(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            m = self.inner
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            x = m.word(input_ids) + m.position(positions) + m.token_type(torch.zeros_like(input_ids))
            x = m.norm(x)
            addend = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * MASK_ADDEND
            for layer in m.layers:
                attention = layer.attention
                heads, hidden = attention.heads, x.shape[2]
                head_dim = hidden // heads

                def split(t: torch.Tensor, heads: int = heads, head_dim: int = head_dim) -> torch.Tensor:
                    return t.view(t.size(0), t.size(1), heads, head_dim).permute(0, 2, 1, 3)

                query, key = split(attention.query(x)), split(attention.key(x))
                value = split(attention.value(x))
                scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(head_dim)
                probabilities = torch.softmax(scores + addend, dim=-1)
                context = torch.matmul(probabilities, value).permute(0, 2, 1, 3).contiguous()
                context = context.view(context.size(0), context.size(1), hidden)
                x = attention.norm(attention.output(context) + x)
                inner = layer.intermediate(x)
                inner = inner * 0.5 * (1.0 + torch.erf(inner / math.sqrt(2.0)))  # exact GELU
                x = layer.norm(layer.output(inner) + x)
            weights = attention_mask.unsqueeze(-1).to(x.dtype)
            pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return functional.normalize(pooled, p=2, dim=1)

    return FusableMiniLM(model).eval()


def probe_batch(pad_id: int = 0, cls_id: int = 101, sep_id: int = 102) -> tuple[np.ndarray, np.ndarray]:
    """Three rows of very different lengths (3, 40 and 200 word pieces), padded: masks must work."""
    rng = np.random.default_rng(0)
    lengths = (3, 40, 200)
    width = max(lengths) + 2
    input_ids = np.full((len(lengths), width), pad_id, dtype=np.int64)
    attention = np.zeros((len(lengths), width), dtype=np.int64)
    for row, length in enumerate(lengths):
        input_ids[row, : length + 2] = [cls_id, *rng.integers(2000, 29000, length), sep_id]
        attention[row, : length + 2] = 1
    return input_ids, attention


def _fused_operator_counts(optimized: Any) -> dict[str, int]:
    counts = optimized.get_fused_operator_statistics()
    return {name: int(counts.get(name, 0)) for name in ("Attention", "SkipLayerNormalization", "BiasGelu")}


def export_fused_fp32(model_path: Path, out: Path) -> None:
    """Export, fuse and verify ``model_path`` into ``out`` (a temporary name the caller renames)."""
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    from barp_sidecar.policy.minilm import load_minilm

    try:
        model, tokenizer = load_minilm(model_path)
    except (OSError, ValueError, KeyError) as exc:
        raise FusedExportError(f"{model_path}: not a BERT sentence encoder with mean pooling: {exc}") from exc
    config = json.loads((model_path / "config.json").read_text())
    heads, hidden, layers = (
        int(config["num_attention_heads"]),
        int(config["hidden_size"]),
        int(config["num_hidden_layers"]),
    )
    example = torch.full((2, 9), 1000, dtype=torch.long)
    axes = {0: "batch", 1: "length"}
    traced = out.with_name(out.name + ".traced")
    # The exporter and the optimiser print progress on stdout, where the sidecar writes its JSON log.
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings(), _quiet_optimizer():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                fusable_module(model),
                (example, torch.ones_like(example)),
                str(traced),
                dynamo=False,
                opset_version=OPSET,
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAMES[0]: axes, INPUT_NAMES[1]: axes, OUTPUT_NAME: {0: "batch"}},
            )
            optimized = optimize_model(
                str(traced), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0
            )
        finally:
            traced.unlink(missing_ok=True)
    counts = _fused_operator_counts(optimized)
    expected = {"Attention": layers, "SkipLayerNormalization": 2 * layers, "BiasGelu": layers}
    if counts != expected:
        raise FusedExportError(f"{out}: ONNX Runtime fused {counts}, expected {expected} for {layers} layers")
    optimized.save_model_to_file(str(out), use_external_data_format=False)
    largest = max_abs_difference(model, out, tokenizer)
    if not largest <= VERIFY_MAX_ABS_DIFF:
        raise FusedExportError(
            f"{out}: the exported graph differs from the torch model by {largest:.2e} "
            f"(> {VERIFY_MAX_ABS_DIFF:.0e}) on the probe batch"
        )


def max_abs_difference(model: Any, onnx_file: Path, tokenizer: Any) -> float:
    """Largest |ONNX − torch| component of the normalised embeddings of ``probe_batch``."""
    import onnxruntime

    input_ids, attention = probe_batch(tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAMES[0]: input_ids, INPUT_NAMES[1]: attention})
    return float(np.abs(np.asarray(got) - torch_reference(model, input_ids, attention)).max())


def torch_reference(model: Any, input_ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """The torch model's L2-normalised embeddings of a padded batch: what an exported graph must compute."""
    import torch

    ids = torch.as_tensor(input_ids)
    features = {"input_ids": ids, "attention_mask": torch.as_tensor(attention), "token_type_ids": ids * 0}
    with torch.inference_mode():
        reference = torch.nn.functional.normalize(model(features)["sentence_embedding"], p=2, dim=1)
    return np.asarray(reference.numpy())


@contextlib.contextmanager
def _quiet_optimizer() -> Any:
    """The optimiser logs every fusion at INFO on its own loggers; keep warnings and errors only."""
    names = ("onnxruntime.transformers", "fusion_base", "onnx_model", "optimizer")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
