"""``barp-trainer calibrate``: store a calibration set (real prompt embeddings) with an existing checkpoint.

Owns the command line: which prompts (``--prompts FILE``, one per line, or the built-in list in
``calibration_prompts.py``), embedding them with the encoder the checkpoint's manifest names, and replacing
the checkpoint's calibration set (``checkpoint.replace_calibration``: weights untouched). ``make
builtin-calibration`` regenerates the shipped policy's set with it. Gives checkpoints written before
calibration sets existed one, so they are dry-run on real embeddings instead of random unit vectors.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from barp_sidecar.errors import DataError
from barp_sidecar.policy.calibration import select_calibration
from barp_sidecar.policy.checkpoint import read_manifest, replace_calibration
from barp_sidecar.policy.encoder import build_encoder
from barp_sidecar.policy.loading import encoder_model_for
from trainer.offline.calibration_prompts import BUILTIN_CALIBRATION_PROMPTS

# More prompts than this are thinned evenly (the dry run runs on every one at several preferences).
MAX_CALIBRATION_PROMPTS = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory (holds manifest.json)")
    parser.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="text file, one prompt per line (default: the built-in list)",
    )
    parser.add_argument(
        "--encoder-model",
        default=None,
        help="encoder files to load (default: the shipped MiniLM for its id, else the manifest's encoder id)",
    )


def read_prompts(path: Path | None) -> list[str]:
    if path is None:
        return list(BUILTIN_CALIBRATION_PROMPTS)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--prompts {path}: unreadable ({exc})") from exc
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise DataError(f"--prompts {path}: no prompts (one per line)")
    return prompts


def run(args: argparse.Namespace) -> int:
    prompts = read_prompts(args.prompts)
    identity = read_manifest(args.checkpoint).encoder
    encoder = build_encoder(identity.settings(encoder_model_for(identity, args.encoder_model), device="cpu"))
    encoder.load()
    if encoder.encoder_id != identity.encoder_id or encoder.dim != identity.dim:
        raise DataError(
            f"--encoder-model: encoder {encoder.encoder_id!r} (dim {encoder.dim}) does not match the "
            f"checkpoint's {identity.encoder_id!r} (dim {identity.dim})"
        )
    calibration = select_calibration(encoder.encode(prompts), size=MAX_CALIBRATION_PROMPTS)
    if calibration is None:
        raise DataError("the prompts gave no usable embedding")
    final = replace_calibration(args.checkpoint, calibration)
    assert final.calibration is not None
    print(
        f"wrote {args.checkpoint}/{final.calibration.file} ({final.calibration.count} prompt embeddings, "
        f"sha256={final.calibration.sha256[:12]}; weights unchanged, sha256={final.weights_sha256[:12]})"
    )
    return 0
