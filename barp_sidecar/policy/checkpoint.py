"""Policy checkpoints on disk (DESIGN §4): write, verify, load, and the versioned store with ``LATEST``.

A checkpoint is a directory holding ``policy.safetensors`` (the network's weights), ``manifest.json``
(everything needed to rebuild and check it) and ``calibration.safetensors`` (real prompt embeddings the
policy is dry-run on before it serves, ``calibration.py``; absent in checkpoints written before it existed).
A store is a directory of ``v{N}/`` checkpoints plus a ``LATEST`` pointer file replaced atomically (write
temp, fsync, rename).

Owns the file format and its validation; knows nothing about serving, training or gRPC. Every failure is a
``CheckpointError`` whose message names the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from barp_sidecar.errors import CheckpointError, RejectionReason
from barp_sidecar.model_names import canonical_model_name
from barp_sidecar.policy.calibration import (
    CALIBRATION_FILE,
    CalibrationEntry,
    CalibrationSet,
    nonfinite_outputs,
    random_probe,
    read_calibration,
    write_calibration,
)
from barp_sidecar.policy.encoder import EncoderSettings
from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork

FORMAT_VERSION = 1
WEIGHTS_FILE = "policy.safetensors"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "LATEST"
_VERSION_DIR = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class EncoderIdentity:
    """Which encoder (and how configured) produced the embeddings a policy was trained on."""

    encoder_id: str
    dim: int
    max_seq_length: int
    truncation: str
    normalized: bool = True
    # sha256 of int8 ONNX encoder files (backend onnx-int8) accepted for this policy after measuring its
    # decisions with them against the fp32 encoder (bench/encoder_backends.py agreement; the target is
    # >= 99.5% at every w_q). The fp32 backends (torch, onnx) compute the same function: no entry needed.
    int8_validated_sha256: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, encoder_id: str, dim: int, settings: EncoderSettings) -> EncoderIdentity:
        return cls(encoder_id, dim, settings.max_seq_length, settings.truncation, True)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EncoderIdentity:
        validated = data.get("int8_validated_sha256", ())
        if not isinstance(validated, list | tuple) or not all(isinstance(v, str) for v in validated):
            raise ValueError("encoder.int8_validated_sha256 must be a list of sha256 strings")
        return cls(**{**data, "int8_validated_sha256": tuple(validated)})

    def core(self) -> EncoderIdentity:
        """The identity without the validated-backend list: what embeddings a policy expects."""
        return replace(self, int8_validated_sha256=())

    def serving_problem(self, backend: str, model_sha256: str) -> str | None:
        """Why this policy must not run on the encoder ``backend`` (file ``model_sha256``), or None."""
        if backend != "onnx-int8":
            return None  # torch and onnx fp32: the same math as the encoder the policy was trained with
        if model_sha256 in self.int8_validated_sha256:
            return None
        return (
            f"the policy was not validated with the int8 ONNX encoder {model_sha256[:12]}… (validated: "
            f"{[v[:12] + '…' for v in self.int8_validated_sha256] or 'none'}): measure its decisions "
            "with bench/encoder_backends.py agreement and list the sha256 in the manifest's "
            "encoder.int8_validated_sha256, or serve it with encoder.backend torch or onnx"
        )

    def settings(self, model: str, device: str = "auto") -> EncoderSettings:
        return EncoderSettings(
            model=model, max_seq_length=self.max_seq_length, truncation=self.truncation, device=device
        )


@dataclass(frozen=True)
class PolicyManifest:
    """Contents of ``manifest.json``. ``weights_sha256`` is filled in by ``save_checkpoint``."""

    version: int
    models: tuple[str, ...]
    encoder: EncoderIdentity
    tau_usd: float
    architecture: PolicyArchitecture
    created_at_unix_s: float = field(default_factory=time.time)
    parent_version: int | None = None
    # Hyper-parameters, data and config digests, seeds: whatever reproduces the training run.
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    format_version: int = FORMAT_VERSION
    # The calibration set's file and sha256, filled in by ``save_checkpoint``; None in older manifests.
    calibration: CalibrationEntry | None = None

    def retired_models(self) -> frozenset[str]:
        """Models this version masks for every prompt (``architecture.exploration_share`` 0: retired by a
        model-pool change, still listed so that outcomes of earlier decisions stay valid)."""
        shares = self.architecture.exploration_share
        return frozenset(name for name, share in zip(self.models, shares, strict=False) if share <= 0.0)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        # The one place the persisted names differ from ours: manifest.json keeps "arms" (and
        # architecture.num_arms, see PolicyArchitecture.to_dict) so every published checkpoint keeps loading.
        data["arms"] = list(data.pop("models"))
        data["architecture"] = self.architecture.to_dict()
        if self.calibration is None:
            del data["calibration"]  # byte-identical manifests for checkpoints without one
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> PolicyManifest:
        try:
            if data.get("format_version") != FORMAT_VERSION:
                raise CheckpointError(
                    f"{source}: unsupported format_version {data.get('format_version')!r} "
                    f"(this build reads {FORMAT_VERSION})",
                    RejectionReason.CORRUPT_MANIFEST,
                )
            # One spelling per model (barp_sidecar/model_names.py), so catalogs and logs meet the models.
            models = tuple(canonical_model_name(str(a)) for a in data["arms"])  # persisted key, see to_json
            if len(models) == 0 or len(set(models)) != len(models):
                raise CheckpointError(
                    f"{source}: models must be a non-empty list of unique names (aliases name one model)",
                    RejectionReason.CORRUPT_MANIFEST,
                )
            return cls(
                version=int(data["version"]),
                models=models,
                encoder=EncoderIdentity.from_json(data["encoder"]),
                tau_usd=float(data["tau_usd"]),
                architecture=PolicyArchitecture.from_dict(data["architecture"]),
                created_at_unix_s=float(data["created_at_unix_s"]),
                parent_version=None if data.get("parent_version") is None else int(data["parent_version"]),
                training=dict(data.get("training", {})),
                metrics=dict(data.get("metrics", {})),
                weights_sha256=str(data["weights_sha256"]),
                format_version=FORMAT_VERSION,
                calibration=(
                    None
                    if data.get("calibration") is None
                    else CalibrationEntry.from_json(data["calibration"])
                ),
            )
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{source}: malformed manifest ({type(exc).__name__}: {exc})",
                RejectionReason.CORRUPT_MANIFEST,
            ) from exc


@dataclass(frozen=True)
class LoadedPolicy:
    """An immutable (manifest, network) pair; the network is in eval mode on CPU float32. ``calibration``
    is the set stored with it (None for older checkpoints); producers carry it into versions they derive."""

    manifest: PolicyManifest
    network: PolicyNetwork
    directory: Path
    calibration: CalibrationSet | None = None

    @property
    def version(self) -> int:
        return self.manifest.version


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    directory: Path,
    network: PolicyNetwork,
    manifest: PolicyManifest,
    calibration: CalibrationSet | None = None,
) -> PolicyManifest:
    """Write a checkpoint into ``directory`` (which must not exist) atomically; return the final manifest.

    ``calibration`` (real prompt embeddings, ``calibration.py``) is stored with it and recorded in the
    manifest; every producer passes one (None only when it has no embedding at all, e.g. a cold start with
    an empty log). Files are written into a sibling temporary directory, fsync'd, then renamed into place,
    so a reader never sees a half-written checkpoint.
    """
    directory = Path(directory)
    if directory.exists():
        raise CheckpointError(f"{directory}: already exists; checkpoints are immutable")
    if network.architecture != manifest.architecture:
        raise CheckpointError(f"{directory}: manifest architecture does not match the network")
    if len(manifest.models) != manifest.architecture.num_models:
        raise CheckpointError(
            f"{directory}: {len(manifest.models)} models but the network has "
            f"{manifest.architecture.num_models}"
        )
    if calibration is not None and (problem := calibration.problem(manifest.encoder.dim)) is not None:
        raise CheckpointError(f"{directory}: calibration set: {problem}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        weights_path = staging / WEIGHTS_FILE
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in network.state_dict().items()}
        save_file(state, str(weights_path))
        written = [weights_path]
        entry = None
        if calibration is not None:
            calibration_path = staging / CALIBRATION_FILE
            write_calibration(calibration_path, calibration)
            entry = CalibrationEntry(
                CALIBRATION_FILE, sha256_file(calibration_path), len(calibration.embeddings)
            )
            written.append(calibration_path)
        final = replace(manifest, weights_sha256=sha256_file(weights_path), calibration=entry)
        manifest_path = staging / MANIFEST_FILE
        manifest_path.write_text(json.dumps(final.to_json(), indent=2, sort_keys=True) + "\n")
        for path in (*written, manifest_path):
            path.chmod(0o644)  # mkstemp/mkdtemp modes are private; checkpoints are read by other users
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        staging.chmod(0o755)
        _fsync_dir(staging)
        os.rename(staging, directory)
        _fsync_dir(directory.parent)
        return final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_manifest(directory: Path) -> PolicyManifest:
    path = Path(directory) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing", RejectionReason.MISSING_FILES) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})", RejectionReason.CORRUPT_MANIFEST) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: must hold a JSON object", RejectionReason.CORRUPT_MANIFEST)
    return PolicyManifest.from_json(data, str(path))


def load_checkpoint(
    directory: Path,
    expected_models: tuple[str, ...] | None = None,
    expected_encoder: EncoderIdentity | None = None,
) -> LoadedPolicy:
    """Load and fully validate a checkpoint: sha256s, model list, encoder identity, tensor shapes, and a dry
    run on its calibration set (random unit vectors for a manifest without one: ``calibration`` is then None
    and whoever serves it logs ``policy_calibration_missing``) at w_q 0, 0.5, 1."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: missing", RejectionReason.MISSING_WEIGHTS)
    actual = sha256_file(weights_path)
    if actual != manifest.weights_sha256:
        raise CheckpointError(
            f"{weights_path}: sha256 mismatch "
            f"(manifest {manifest.weights_sha256[:12]}…, file {actual[:12]}…)",
            RejectionReason.SHA256_MISMATCH,
        )
    if expected_models is not None and tuple(expected_models) != manifest.models:
        raise CheckpointError(
            f"{directory}: model list {list(manifest.models)} does not match the expected "
            f"{list(expected_models)}",
            RejectionReason.MODEL_LIST_MISMATCH,
        )
    if expected_encoder is not None and expected_encoder.core() != manifest.encoder.core():
        raise CheckpointError(
            f"{directory}: trained with encoder {manifest.encoder}, but this sidecar runs {expected_encoder}",
            RejectionReason.ENCODER_MISMATCH,
        )
    if manifest.architecture.embedding_dim != manifest.encoder.dim:
        raise CheckpointError(
            f"{directory}: architecture embedding_dim != encoder dim", RejectionReason.CORRUPT_MANIFEST
        )
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights_path}: unreadable safetensors ({exc})", RejectionReason.CORRUPT_WEIGHTS
        ) from exc
    network = PolicyNetwork(manifest.architecture)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{weights_path}: weights do not fit the architecture ({exc})", RejectionReason.CORRUPT_WEIGHTS
        ) from exc
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    calibration = load_calibration(directory, manifest)
    if calibration is not None:
        embeddings, weights = calibration.dry_run_inputs()
        probe = f"its calibration set {CALIBRATION_FILE} ({len(calibration.embeddings)} prompt embeddings)"
    else:
        embeddings, weights = random_probe(manifest.encoder.dim)
        probe = "random unit vectors (the manifest names no calibration set)"
    bad = nonfinite_outputs(network, embeddings, weights)
    if bad:
        raise CheckpointError(
            f"{weights_path}: non-finite logits or probabilities on {bad} of {len(embeddings)} dry-run "
            f"inputs ({probe} at w_q {sorted(set(weights.tolist()))})",
            RejectionReason.NON_FINITE,
        )
    return LoadedPolicy(manifest=manifest, network=network, directory=directory, calibration=calibration)


def load_calibration(directory: Path, manifest: PolicyManifest) -> CalibrationSet | None:
    """The calibration set ``manifest`` names, verified (file present, sha256, shape, unit norms); None when
    the manifest names none."""
    entry = manifest.calibration
    if entry is None:
        return None
    path = Path(directory) / entry.file
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the manifest names it)", RejectionReason.MISSING_FILES)
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise CheckpointError(
            f"{path}: sha256 mismatch (manifest {entry.sha256[:12]}…, file {actual[:12]}…)",
            RejectionReason.SHA256_MISMATCH,
        )
    return read_calibration(path, manifest.encoder.dim, entry.count)


def replace_calibration(directory: Path, calibration: CalibrationSet) -> PolicyManifest:
    """Give the checkpoint at ``directory`` a new calibration set (weights byte-identical, manifest updated);
    returns the new manifest. The checkpoint is loaded (validated) first; the new one is assembled in a
    sibling directory and renamed into place, so a reader sees the old or the new checkpoint, never a mix."""
    directory = Path(directory)
    manifest = load_checkpoint(directory).manifest
    if (problem := calibration.problem(manifest.encoder.dim)) is not None:
        raise CheckpointError(f"{directory}: calibration set: {problem}", RejectionReason.CALIBRATION_INVALID)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.calibrated.", dir=directory.parent))
    retired = staging.with_name(staging.name + ".old")
    try:
        shutil.copyfile(directory / WEIGHTS_FILE, staging / WEIGHTS_FILE)
        write_calibration(staging / CALIBRATION_FILE, calibration)
        entry = CalibrationEntry(
            CALIBRATION_FILE, sha256_file(staging / CALIBRATION_FILE), len(calibration.embeddings)
        )
        final = replace(manifest, calibration=entry)
        (staging / MANIFEST_FILE).write_text(json.dumps(final.to_json(), indent=2, sort_keys=True) + "\n")
        for name in (WEIGHTS_FILE, CALIBRATION_FILE, MANIFEST_FILE):
            (staging / name).chmod(0o644)
            with (staging / name).open("rb") as handle:
                os.fsync(handle.fileno())
        staging.chmod(0o755)
        load_checkpoint(staging)  # the new set must pass the dry run before it replaces the old one
        os.rename(directory, retired)
        try:
            os.rename(staging, directory)
        except BaseException:
            os.rename(retired, directory)  # the old checkpoint comes back; nothing is lost
            raise
        _fsync_dir(directory.parent)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)


def version_dir_name(version: int) -> str:
    return f"v{version}"


class CheckpointStore:
    """A directory of immutable ``v{N}/`` checkpoints and an atomically replaced ``LATEST`` pointer."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            match = _VERSION_DIR.match(entry.name)
            if match and entry.is_dir():
                found.append(int(match.group(1)))
        return sorted(found)

    def path(self, version: int) -> Path:
        return self.root / version_dir_name(version)

    def latest_version(self) -> int | None:
        pointer = self.root / LATEST_FILE
        try:
            text = pointer.read_text().strip()
        except FileNotFoundError:
            return None
        match = _VERSION_DIR.match(text)
        if not match:
            raise CheckpointError(f"{pointer}: expected 'v<N>', found {text[:40]!r}")
        return int(match.group(1))

    def publish(
        self, network: PolicyNetwork, manifest: PolicyManifest, calibration: CalibrationSet | None = None
    ) -> PolicyManifest:
        """Save ``manifest.version`` (with its calibration set) and point ``LATEST`` at it. The version must
        be new."""
        if manifest.version in self.versions():
            raise CheckpointError(f"{self.path(manifest.version)}: version already published")
        final = save_checkpoint(self.path(manifest.version), network, manifest, calibration)
        self.set_latest(manifest.version)
        return final

    def set_latest(self, version: int) -> None:
        if not self.path(version).is_dir():
            raise CheckpointError(f"{self.path(version)}: no such version")
        self.root.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=".LATEST.", dir=self.root)
        try:
            with os.fdopen(handle, "w") as out:
                out.write(version_dir_name(version) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.root / LATEST_FILE)
            _fsync_dir(self.root)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
