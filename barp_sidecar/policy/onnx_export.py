"""ONNX files of a BERT sentence encoder: export, int8 quantisation, sha256-verified cache.

Owns the on-disk layout ``<onnx_dir>/<source digest>/`` holding ``model.onnx`` (fp32, the fused
transformer + pooling + normalisation), ``model-int8.onnx`` (dynamic int8 weights, per channel, of its
MatMuls with constant weights: attention output and FFN; the fused Attention stays fp32) and
``export.json`` (each file's sha256, the source weights' sha256 and the exporting library versions).
``<source digest>`` covers the weights and those versions, so a different model or exporter never reuses
another's files. ``policy.openvino_export`` keeps the OpenVINO files in the same directory and record,
through the helpers here (``atomic_write``, ``verified_sha256``, ``write_record``, ``export_explained``).
Knows nothing about policies or serving.

``ensure_onnx_model`` returns a verified file: it is exported (seconds to a minute, needs torch) when
missing, and re-exported when its sha256 no longer matches ``export.json``; a directory that cannot be
written (a read-only image layer) turns either case into ``OnnxModelError`` naming the file.
Every file is written to a temporary name, fsync'd and renamed, so a crash never leaves a half file, and
two processes exporting at once write identical bytes. Export is deterministic for fixed library versions
(measured: two exports, one sha256), which is what lets a policy manifest name the file it was validated
with.

The fp32 graph is ``policy.onnx_fused``'s: fused by ONNX Runtime's BERT optimiser and verified against
the torch model (max |Δ| ≤ 1e-5) before it is written.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from barp_sidecar.policy.onnx_fused import OPSET

ONNX_BACKENDS = ("onnx", "onnx-int8")
FP32_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"
RECORD_FILE = "export.json"
# Bump when the exported graph or the quantisation recipe changes: old cache directories are then ignored.
EXPORT_RECIPE = 2
_T = TypeVar("_T")
_LIBRARIES = (
    "torch",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "openvino",
    "sentence-transformers",
    "transformers",
)


class OnnxModelError(Exception):
    """An ONNX model file is missing, corrupt or cannot be produced. The message names the file."""


class OnnxRuntimeUnsupported(OnnxModelError):
    """This onnxruntime cannot run a verified file (an operator or opset it lacks)."""


@dataclass(frozen=True)
class OnnxModel:
    """A verified ONNX encoder file and its sha256 (the identity a policy manifest records)."""

    backend: str
    path: Path
    sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def weight_files(model_path: Path) -> list[Path]:
    files = sorted(model_path.glob("*.safetensors")) + sorted(model_path.glob("*.bin"))
    if not files:
        raise OnnxModelError(f"{model_path}: no *.safetensors or *.bin weights to export from")
    return files


def source_record(model_path: Path) -> dict[str, Any]:
    """What the export depends on: the weights' sha256, the recipe and the library versions."""
    return {
        "recipe": EXPORT_RECIPE,
        "opset": OPSET,
        "weights_sha256": {f.name: file_sha256(f) for f in weight_files(model_path)},
        "libraries": library_versions(),
    }


def source_digest(source: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(temp)`` then fsync and rename onto ``path`` (same directory, so the rename is atomic)."""
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        write(temp)
        temp.chmod(0o644)  # mkstemp files are private; an image's files are read by another user
        with temp.open("rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def export_fp32(model_path: Path, out: Path) -> None:
    """The fused, verified fp32 graph (``policy.onnx_fused``): transformer + mean pooling + L2 norm."""
    from barp_sidecar.policy.onnx_fused import FusedExportError, export_fused_fp32

    try:
        export_fused_fp32(model_path, out)
    except FusedExportError as exc:
        raise OnnxModelError(str(exc)) from exc


def quantize_int8(fp32: Path, out: Path) -> None:
    """Dynamic int8: per-channel weights of MatMuls with constant weights (activations stay float).

    Per-tensor weights or quantising the attention's activation×activation MatMuls too gave cosine 0.96
    mean / 0.91 min to fp32 on AlpacaEval prompts; this recipe 0.995 / 0.987. More accurate variants
    (SmoothQuant, block-wise 8-bit) were measured and not adopted (docs/benchmarks.md).
    """
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser warns "consider pre-processing" on the root logger
    try:
        quantize_dynamic(
            fp32,
            out,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            # The fused graph's contrib operators defeat the quantiser's shape inference: outputs are float.
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)


def read_record(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def verified_sha256(directory: Path, name: str) -> str | None:
    """The file's sha256 if it exists and matches export.json, else None."""
    record = read_record(directory)
    path = directory / name
    if record is None or not path.is_file():
        return None
    expected = record.get("files", {}).get(name)
    actual = file_sha256(path)
    return actual if expected == actual else None


def problem(directory: Path, name: str) -> str:
    """Why the file is not usable (for error messages and logs)."""
    path = directory / name
    if not path.is_file():
        return f"{path}: missing"
    if read_record(directory) is None:
        return f"{directory / RECORD_FILE}: missing or unreadable"
    return f"{path}: sha256 does not match {RECORD_FILE} (corrupt or modified)"


def export_all(model_path: Path, directory: Path, source: dict[str, Any]) -> dict[str, str]:
    """Export fp32 (unless a verified one is there), quantise int8, write export.json last.

    Returns {file name: sha256}."""
    directory.mkdir(parents=True, exist_ok=True)
    if verified_sha256(directory, FP32_FILE) is None:
        atomic_write(directory / FP32_FILE, lambda temp: export_fp32(model_path, temp))
    atomic_write(directory / INT8_FILE, lambda temp: quantize_int8(directory / FP32_FILE, temp))
    files = {name: file_sha256(directory / name) for name in (FP32_FILE, INT8_FILE)}
    write_record(directory, source, files)
    return files


def write_record(directory: Path, source: dict[str, Any], files: dict[str, str]) -> None:
    """Record ``files`` ({name: sha256}) in export.json, keeping the entries other exporters recorded
    there (``policy.openvino_export`` shares the directory). The read-modify-write holds an exclusive
    lock on the directory, so two processes exporting different files at once lose neither entry."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        previous = read_record(directory) or {}
        kept = previous.get("files")
        if not isinstance(kept, dict) or any(previous.get(key) != value for key, value in source.items()):
            kept = {}  # none, or recorded for another source: nothing in it can be trusted
        record = {**source, "files": {**kept, **files}}
        atomic_write(
            directory / RECORD_FILE, lambda temp: temp.write_text(json.dumps(record, indent=2) + "\n")
        )
    finally:
        os.close(descriptor)  # releases the lock


def model_directory(model_path: Path, onnx_dir: Path) -> tuple[Path, dict[str, Any]]:
    source = source_record(model_path)
    return onnx_dir / source_digest(source), source


def ensure_onnx_model(
    model_path: Path,
    onnx_dir: Path,
    backend: str,
    on_export: Callable[[str], None] | None = None,
) -> OnnxModel:
    """A verified ONNX file for ``backend``; exports (or re-exports a corrupt one) when it can write.

    ``on_export(reason)`` is called before an export starts (the caller logs it). Raises OnnxModelError
    naming the file when the file is unusable and cannot be (re-)exported.
    """
    if backend not in ONNX_BACKENDS:
        raise ValueError(f"backend must be one of {ONNX_BACKENDS}, not {backend!r}")
    name = INT8_FILE if backend == "onnx-int8" else FP32_FILE
    directory, source = model_directory(model_path, onnx_dir)
    sha = verified_sha256(directory, name)
    if sha is not None:
        return OnnxModel(backend, directory / name, sha)
    reason = problem(directory, name)
    if on_export is not None:
        on_export(reason)
    files = export_explained(
        reason, "torch and onnxruntime", lambda: export_all(model_path, directory, source)
    )
    return OnnxModel(backend, directory / name, files[name])


def export_explained(reason: str, needs: str, export: Callable[[], _T]) -> _T:
    """``export()``; any failure becomes OnnxModelError starting with ``reason`` (why an export was
    needed, naming the file). ``needs`` names the packages an ImportError is about."""
    try:
        return export()
    except OnnxModelError as exc:
        raise OnnxModelError(f"{reason}; exporting it failed: {exc}") from exc
    except OSError as exc:
        raise OnnxModelError(f"{reason}; exporting it failed: {exc}") from exc
    except ImportError as exc:
        raise OnnxModelError(f"{reason}; exporting it needs {needs}: {exc}") from exc
    except Exception as exc:  # the exporters raise RuntimeError and their own classes, e.g. on a full disk
        raise OnnxModelError(f"{reason}; exporting it failed ({type(exc).__name__}: {exc})") from exc
