"""The OpenVINO IR of a BERT sentence encoder: conversion, verification against torch, and its cached files.

Owns the ``openvino`` backend's two files, ``model.xml`` (the graph) and ``model.bin`` (its fp32 weights),
kept in ``policy.onnx_export``'s cache directory ``<onnx_dir>/<source digest>/`` and recorded in the same
``export.json`` through that module's helpers: sha256-verified at every start, re-exported when missing
or corrupt, written to a temporary name, fsync'd and renamed (the weights first, the graph second, the
record last), and ``OnnxModelError`` naming the file when the directory cannot be written. The source
digest includes the openvino version. Knows nothing about policies, serving or the ONNX files.

The graph is ``policy.onnx_fused.fusable_module`` (transformer + mean pooling + L2 normalisation) converted
by ``openvino.convert_model`` from the torch module: exact (max |Δ| ~2e-7) when compiled with
``FP32_CONFIG``. Reading the fused ONNX file instead gives wrong embeddings (|Δ| up to 0.09: OpenVINO's
reading of ONNX Runtime's contrib operators), so it is not a route. The weights are saved uncompressed
(``save_model`` would store them as fp16 by default). openvino is imported without its usage telemetry
(``import_openvino``; tested: nothing is written to ``$HOME``). Every conversion is checked against the
torch model on ``onnx_fused.probe_batch`` from the written files and refused unless the largest difference
is at most ``onnx_fused.VERIFY_MAX_ABS_DIFF``. Conversion is deterministic for fixed library versions once
the names OpenVINO draws from process-wide counters are replaced (``name_by_position``; tested: a
re-conversion in the same process gives both files' sha256 again), so two processes exporting at once
write identical bytes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from barp_sidecar.policy.onnx_export import (
    OnnxModelError,
    atomic_write,
    export_explained,
    file_sha256,
    model_directory,
    problem,
    verified_sha256,
    write_record,
)

OPENVINO_BACKEND = "openvino"
GRAPH_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"
# Without the hint OpenVINO infers in bf16 on CPUs that have it (measured on an avx512_bf16 EPYC: |Δ| 1.2e-3
# on the probe batch, against ~2e-7 in f32).
FP32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


@dataclass(frozen=True)
class OpenVinoModel:
    """A verified OpenVINO IR: the graph file (its weights file lies beside it) and both files' sha256."""

    graph_path: Path
    graph_sha256: str
    weights_sha256: str

    @property
    def sha256(self) -> str:
        """The pair's identity (the graph file alone does not hold the weights): sha256 of
        "<graph sha256> <weights sha256>". An embedding cache keys on it; no policy manifest needs it (fp32
        computes the torch encoder's function)."""
        return hashlib.sha256(f"{self.graph_sha256} {self.weights_sha256}".encode()).hexdigest()


def ensure_openvino_model(
    model_path: Path, onnx_dir: Path, on_export: Callable[[str], None] | None = None
) -> OpenVinoModel:
    """The verified IR of ``model_path``; converts (or re-converts a corrupt one) when it can write.

    ``on_export(reason)`` is called before a conversion starts (the caller logs it). Raises
    OnnxModelError naming the file when it is unusable and cannot be (re-)exported."""
    directory, source = model_directory(model_path, onnx_dir)
    graph, weights = verified_sha256(directory, GRAPH_FILE), verified_sha256(directory, WEIGHTS_FILE)
    if graph is not None and weights is not None:
        return OpenVinoModel(directory / GRAPH_FILE, graph, weights)
    reason = problem(directory, GRAPH_FILE if graph is None else WEIGHTS_FILE)
    if on_export is not None:
        on_export(reason)
    files = export_explained(reason, "torch and openvino", lambda: export_ir(model_path, directory, source))
    return OpenVinoModel(directory / GRAPH_FILE, files[GRAPH_FILE], files[WEIGHTS_FILE])


def export_ir(model_path: Path, directory: Path, source: dict[str, Any]) -> dict[str, str]:
    """Convert and verify into a private staging directory, move both files into place, record them.

    Returns {file name: sha256}."""
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".openvino.", suffix=".tmp", dir=directory))
    try:
        convert_fp32(model_path, staging / GRAPH_FILE)
        for name in (WEIGHTS_FILE, GRAPH_FILE):
            atomic_write(directory / name, functools.partial(os.replace, staging / name))  # moved, not copied
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = {name: file_sha256(directory / name) for name in (GRAPH_FILE, WEIGHTS_FILE)}
    write_record(directory, source, files)
    return files


def import_openvino() -> Any:
    """``import openvino`` without its telemetry; every module here imports openvino through this.

    ``import openvino`` imports ``openvino.tools.ovc``, whose ``__init__`` starts ``openvino_telemetry``: it
    writes ``$HOME/intel`` and posts an "import" event (and one per ``convert_model``) to Google Analytics
    from a subprocess it waits up to 3 s for, unless a consent file in ``$HOME/intel`` says no or ``CI`` is
    set. A sidecar must not phone home nor write outside its own directories, so ``openvino_telemetry`` is
    made unimportable for this process before openvino loads (``sys.modules`` entry None), which sends
    ``openvino.tools.ovc`` down its own fallback: the no-op ``telemetry_stub``. If openvino was imported
    before (by the embedding application), its converter modules are pointed at the stub as well."""
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
    import openvino
    import openvino.tools.ovc.convert_impl as convert_impl
    import openvino.tools.ovc.telemetry_stub as stub
    import openvino.tools.ovc.telemetry_utils as telemetry_utils
    import openvino.tools.ovc.utils as ovc_utils

    for module in (convert_impl, telemetry_utils, ovc_utils):
        if not hasattr(module, "tm"):
            raise RuntimeError(f"{module.__name__} no longer names its telemetry `tm`: recheck the opt-out")
        module.tm = stub
    return openvino


def convert_fp32(model_path: Path, graph: Path) -> None:
    """Convert the torch model into ``graph`` (+ the ``.bin`` beside it) and verify the written files."""
    openvino = import_openvino()
    import torch

    from barp_sidecar.policy.minilm import load_minilm
    from barp_sidecar.policy.onnx_fused import INPUT_NAMES, OUTPUT_NAME, fusable_module

    try:
        model, tokenizer = load_minilm(model_path)
    except (OSError, ValueError, KeyError) as exc:
        raise OnnxModelError(f"{model_path}: not a BERT sentence encoder with mean pooling: {exc}") from exc
    example = torch.full((2, 9), 1000, dtype=torch.long)
    # The tracer warns on stderr and may print on stdout, where the sidecar writes its JSON log.
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = openvino.convert_model(
            fusable_module(model),
            example_input=(example, torch.ones_like(example)),
            input=[(name, [-1, -1], openvino.Type.i64) for name in INPUT_NAMES],
        )
    for port, name in zip(converted.inputs, INPUT_NAMES, strict=True):
        port.get_tensor().set_names({name})
    (output,) = converted.outputs
    output.get_tensor().set_names({OUTPUT_NAME})
    # save_model applies the converter's transformations (constant folding, clean-up), which name new
    # operations too: name them on the saved graph, then write that as is.
    saved = graph.with_name("saved.xml")
    openvino.save_model(converted, str(saved), compress_to_fp16=False)
    transformed = openvino.Core().read_model(str(saved))
    name_by_position(transformed)
    openvino.serialize(transformed, str(graph), str(graph.with_suffix(".bin")))
    verify(model, tokenizer, graph)


def name_by_position(transformed: Any) -> None:
    """Replace the names OpenVINO generates from process-wide counters (the model's ``Model<n>``, an
    unnamed operation's ``<type>_<n>``) with names from the graph's own order. Without this the second
    conversion in one process writes a different graph file (measured: 428 differing lines, same
    weights), so its sha256 would depend on what the process converted before."""
    transformed.set_friendly_name("sentence_encoder")
    for position, operation in enumerate(transformed.get_ordered_ops()):
        if re.fullmatch(r"[A-Za-z][A-Za-z0-9]*_\d+", operation.get_friendly_name()):
            operation.set_friendly_name(f"{operation.get_type_name()}_{position}")


def verify(model: Any, tokenizer: Any, graph: Path) -> None:
    """Refuse ``graph`` unless it computes the torch model's embeddings on the probe batch."""
    openvino = import_openvino()

    from barp_sidecar.policy.onnx_fused import (
        INPUT_NAMES,
        OUTPUT_NAME,
        VERIFY_MAX_ABS_DIFF,
        probe_batch,
        torch_reference,
    )

    input_ids, attention = probe_batch(tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id)
    compiled = openvino.Core().compile_model(str(graph), "CPU", FP32_CONFIG)
    got = compiled({INPUT_NAMES[0]: input_ids, INPUT_NAMES[1]: attention})[OUTPUT_NAME]
    largest = float(np.abs(got - torch_reference(model, input_ids, attention)).max())
    if not largest <= VERIFY_MAX_ABS_DIFF:
        raise OnnxModelError(  # the caller names the file: ``graph`` is a staging name
            f"the converted graph differs from the torch model by {largest:.2e} "
            f"(> {VERIFY_MAX_ABS_DIFF:.0e}) on the probe batch"
        )
