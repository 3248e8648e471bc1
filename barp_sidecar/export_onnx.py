"""``barp-sidecar export-onnx``: export and quantise the encoder into an ONNX directory, convert it to
OpenVINO's IR there too, print the files.

Owns this one-shot command only (the exports themselves are ``policy.onnx_export`` and
``policy.openvino_export``). The image runs it at build time so a container never exports; anyone can run
it to warm ``encoder.onnx_dir`` before a first start.
``--require-validated`` fails (exit 1) unless the policy (the shipped one by default) lists the int8
file's sha256, i.e. unless ``encoder.backend: auto`` will really serve int8 with these files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from barp_sidecar.errors import CheckpointError
from barp_sidecar.policy.backends import default_onnx_dir
from barp_sidecar.policy.checkpoint import read_manifest
from barp_sidecar.policy.encoder import BUILTIN_MODEL, builtin_model_path
from barp_sidecar.policy.onnx_export import FP32_FILE, INT8_FILE, OnnxModelError, ensure_onnx_model
from barp_sidecar.policy.openvino_export import GRAPH_FILE, WEIGHTS_FILE, ensure_openvino_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx-dir", type=Path, default=None, help="default: the user cache directory")
    parser.add_argument("--encoder-model", default=BUILTIN_MODEL, help="a local sentence-transformers dir")
    parser.add_argument(
        "--require-validated",
        action="store_true",
        help="exit 1 unless the policy's manifest lists the int8 file's sha256",
    )
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="policy (default: the shipped one)")


def run(args: argparse.Namespace) -> int:
    source = Path(builtin_model_path() if args.encoder_model == BUILTIN_MODEL else args.encoder_model)
    onnx_dir = args.onnx_dir or default_onnx_dir()
    try:
        files = {backend: ensure_onnx_model(source, onnx_dir, backend) for backend in ("onnx", "onnx-int8")}
        graph = ensure_openvino_model(source, onnx_dir)
    except OnnxModelError as exc:
        print(f"encoder.onnx_dir: {exc}", file=sys.stderr)
        return 2
    report = {
        name: {"path": str(files[backend].path), "sha256": files[backend].sha256}
        for backend, name in (("onnx", FP32_FILE), ("onnx-int8", INT8_FILE))
    }
    report[GRAPH_FILE] = {"path": str(graph.graph_path), "sha256": graph.graph_sha256}
    report[WEIGHTS_FILE] = {
        "path": str(graph.graph_path.with_name(WEIGHTS_FILE)),
        "sha256": graph.weights_sha256,
    }
    print(json.dumps(report, indent=2))
    if args.require_validated:
        if args.checkpoint_dir is None:
            from barp_sidecar.policy.builtin import builtin_policy_dir

            args.checkpoint_dir = builtin_policy_dir()
        try:
            identity = read_manifest(Path(args.checkpoint_dir)).encoder
        except CheckpointError as exc:
            print(f"--checkpoint-dir: {exc}", file=sys.stderr)
            return 2
        problem = identity.serving_problem("onnx-int8", files["onnx-int8"].sha256)
        if problem is not None:
            print(f"{args.checkpoint_dir}: {problem}", file=sys.stderr)
            return 1
    return 0
