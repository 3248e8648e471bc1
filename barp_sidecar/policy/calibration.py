"""The calibration set stored with a policy, and the dry run that every load and swap performs on it.

A calibration set is a few real prompt embeddings (``embeddings`` float32 [N, dim], L2-normalised like the
encoder's output) and the preference weights traffic used with them (``preference_weights`` float32 [M],
each in [0, 1]), saved as ``calibration.safetensors`` next to the weights; the manifest's ``calibration``
entry records the file, its sha256 and N. Before a policy serves, it runs on every embedding at w_q 0, 0.5, 1
and the stored weights: a non-finite logit or probability rejects it (``RejectionReason.NON_FINITE``).
Manifests written before calibration sets existed are dry-run on deterministic random unit vectors instead.

Owns the file format, choosing a set from a producer's embeddings, and the dry run. Knows nothing about the
manifest's other fields, serving, training or gRPC (``checkpoint.py`` wires it into save and load).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from barp_sidecar.errors import CheckpointError, RejectionReason
from barp_sidecar.policy.network import PolicyNetwork

CALIBRATION_FILE = "calibration.safetensors"
# How many embeddings a producer stores by default (64 x 384 float32 = 96 KiB for MiniLM).
DEFAULT_CALIBRATION_SIZE = 64
# Every dry run covers these preferences; the stored weights are added to them.
VALIDATION_WEIGHTS = (0.0, 0.5, 1.0)
# Fallback probe for manifests without a calibration set: deterministic random unit vectors plus zero.
RANDOM_PROBE_EMBEDDINGS = 32
RANDOM_PROBE_SEED = 20251007
# A stored unit vector may differ from norm 1 by float32 rounding; anything further is not an embedding.
_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class CalibrationEntry:
    """The manifest's ``calibration`` object: which file, its sha256, how many embeddings it holds."""

    file: str
    sha256: str
    count: int

    @classmethod
    def from_json(cls, data: Any) -> CalibrationEntry:
        if not isinstance(data, dict):
            raise ValueError("calibration must be an object {file, sha256, count}")
        entry = cls(file=str(data["file"]), sha256=str(data["sha256"]), count=int(data["count"]))
        if entry.file != CALIBRATION_FILE:
            raise ValueError(f"calibration.file must be {CALIBRATION_FILE!r}, found {entry.file!r}")
        if entry.count < 1:
            raise ValueError("calibration.count must be >= 1")
        return entry


@dataclass(frozen=True)
class CalibrationSet:
    """Real prompt embeddings [N, dim] and preference weights [M] a policy is dry-run on."""

    embeddings: torch.Tensor
    preference_weights: torch.Tensor

    def problem(self, dim: int) -> str | None:
        """Why this is not a usable calibration set for ``dim``-dimensional embeddings, or None."""
        embeddings, weights = self.embeddings, self.preference_weights
        if embeddings.dtype != torch.float32 or weights.dtype != torch.float32:
            return f"tensors must be float32 (embeddings {embeddings.dtype}, weights {weights.dtype})"
        if embeddings.ndim != 2 or embeddings.shape[0] < 1 or embeddings.shape[1] != dim:
            return f"embeddings have shape {list(embeddings.shape)}, expected [N >= 1, {dim}]"
        if weights.ndim != 1:
            return f"preference_weights have shape {list(weights.shape)}, expected [M]"
        if not torch.isfinite(embeddings).all():
            return "embeddings hold non-finite values"
        norms = embeddings.norm(dim=1)
        if ((norms - 1.0).abs() > _NORM_TOLERANCE).any():
            worst = float((norms - 1.0).abs().max())
            return f"embeddings must be L2-normalised like the encoder's output (norm off by {worst:.3g})"
        if not (torch.isfinite(weights).all() and ((weights >= 0) & (weights <= 1)).all()):
            return "preference_weights must lie in [0, 1]"
        return None

    def dry_run_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every embedding at every distinct weight in ``VALIDATION_WEIGHTS`` and the stored weights."""
        stored = [float(w) for w in self.preference_weights.tolist()]
        weights = torch.tensor(sorted(set(VALIDATION_WEIGHTS) | set(stored)), dtype=torch.float32)
        count = self.embeddings.shape[0]
        return self.embeddings.repeat(len(weights), 1), weights.repeat_interleave(count)


def select_calibration(
    embeddings: np.ndarray | torch.Tensor,
    preference_weights: np.ndarray | torch.Tensor | None = None,
    size: int = DEFAULT_CALIBRATION_SIZE,
) -> CalibrationSet | None:
    """Up to ``size`` of a producer's real embeddings, evenly spaced (deterministic), re-normalised; None when
    there is no usable row (no embeddings, or only zero / non-finite ones).

    ``preference_weights`` are the rows' w_q (the online trainer's events; up to 8 distinct values, evenly
    spaced, are kept); None stores ``VALIDATION_WEIGHTS``.
    """
    matrix = np.asarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        return None
    usable = np.flatnonzero(np.isfinite(matrix).all(axis=1) & (np.linalg.norm(matrix, axis=1) > 1e-6))
    if usable.size == 0:
        return None
    rows = usable[np.unique(np.linspace(0, usable.size - 1, num=min(size, usable.size)).round().astype(int))]
    chosen = torch.nn.functional.normalize(torch.from_numpy(matrix[rows]), dim=1).contiguous()
    weights = np.asarray(VALIDATION_WEIGHTS, dtype=np.float32)
    if preference_weights is not None:
        stored = np.asarray(preference_weights, dtype=np.float32).reshape(-1)
        stored = np.unique(stored[np.isfinite(stored) & (stored >= 0) & (stored <= 1)].round(3))
        if stored.size:
            picks = np.linspace(0, stored.size - 1, num=min(8, stored.size)).round().astype(int)
            weights = stored[np.unique(picks)]
    return CalibrationSet(chosen, torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32)))


def write_calibration(path: Path, calibration: CalibrationSet) -> None:
    """Save ``calibration`` as a safetensors file at ``path`` (checkpoint.py names it and hashes it)."""
    tensors = {"embeddings": calibration.embeddings, "preference_weights": calibration.preference_weights}
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}, str(path))


def read_calibration(path: Path, dim: int, count: int) -> CalibrationSet:
    """Read and check a calibration file (its sha256 already verified); problems are CheckpointErrors."""
    try:
        tensors = load_file(str(path))
        calibration = CalibrationSet(tensors["embeddings"], tensors["preference_weights"])
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: unreadable calibration set ({type(exc).__name__}: {exc})",
            RejectionReason.CALIBRATION_INVALID,
        ) from exc
    problem = calibration.problem(dim)
    if problem is None and calibration.embeddings.shape[0] != count:
        problem = f"holds {calibration.embeddings.shape[0]} embeddings, the manifest says {count}"
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}", RejectionReason.CALIBRATION_INVALID)
    return calibration


def random_probe(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The dry run's inputs without a calibration set: zero and random unit vectors, each at w_q 0, 0.5, 1."""
    generator = torch.Generator().manual_seed(RANDOM_PROBE_SEED)
    vectors = torch.nn.functional.normalize(
        torch.randn(RANDOM_PROBE_EMBEDDINGS, dim, generator=generator), dim=1
    )
    embeddings = torch.cat([torch.zeros(1, dim), vectors]).repeat(len(VALIDATION_WEIGHTS), 1)
    weights = torch.tensor(VALIDATION_WEIGHTS).repeat_interleave(RANDOM_PROBE_EMBEDDINGS + 1)
    return embeddings, weights


def nonfinite_outputs(network: PolicyNetwork, embeddings: torch.Tensor, weights: torch.Tensor) -> int:
    """How many (embedding, weight) rows give a non-finite logit or probability (no model masked)."""
    with torch.inference_mode():
        logits = network(embeddings, weights, None)
        probabilities = torch.softmax(logits.float(), dim=-1)
    bad = ~(torch.isfinite(logits).all(dim=1) & torch.isfinite(probabilities).all(dim=1))
    return int(bad.sum())
