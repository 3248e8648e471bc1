"""Startup policy resolution: which checkpoint directory serves, and the encoder it needs.

Owns the mapping from settings (``policy.checkpoint_dir``, ``policy.encoder_model``, ``policy.device``,
``encoder.backend``, ``encoder.onnx_dir``) to a loaded checkpoint and a matching, loaded encoder. Every
failure is a ConfigError naming the setting, raised before any port binds.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from barp_sidecar.errors import CheckpointError, ConfigError
from barp_sidecar.policy.backends import (
    CPU_FP32_BACKEND,
    BackendChoice,
    default_onnx_dir,
    encoder_backend_identity,
    load_backend_encoder,
    resolve_backend,
)
from barp_sidecar.policy.builtin import builtin_policy_dir
from barp_sidecar.policy.checkpoint import (
    LATEST_FILE,
    MANIFEST_FILE,
    CheckpointStore,
    EncoderIdentity,
    LoadedPolicy,
    load_checkpoint,
)
from barp_sidecar.policy.device import DevicePlacement
from barp_sidecar.policy.encoder import BUILTIN_MODEL, BUILTIN_MODEL_ID, Encoder, EncoderSettings
from barp_sidecar.policy.onnx_export import OnnxModelError, OnnxRuntimeUnsupported
from barp_sidecar.settings import EncoderBackend, EncoderBackendSettings, PolicySettings

log = structlog.get_logger(__name__)


def resolve_checkpoint_dir(checkpoint_dir: str | None) -> Path:
    """A single checkpoint dir (has manifest.json) or a store's LATEST; None = the shipped policy."""
    if checkpoint_dir is None:
        return builtin_policy_dir()
    path = Path(checkpoint_dir)
    if (path / MANIFEST_FILE).is_file():
        return path
    if (path / LATEST_FILE).is_file():
        try:
            version = CheckpointStore(path).latest_version()
        except CheckpointError as exc:
            raise ConfigError("policy.checkpoint_dir", str(exc)) from exc
        assert version is not None
        return CheckpointStore(path).path(version)
    raise ConfigError(
        "policy.checkpoint_dir",
        f"{path} holds neither {MANIFEST_FILE} (a checkpoint) nor {LATEST_FILE} (a store)",
    )


def load_startup_policy(settings: PolicySettings) -> LoadedPolicy:
    directory = resolve_checkpoint_dir(settings.checkpoint_dir)
    try:
        return load_checkpoint(directory)
    except CheckpointError as exc:
        raise ConfigError("policy.checkpoint_dir", str(exc)) from exc


def encoder_model_for(identity: EncoderIdentity, configured: str | None) -> str:
    """The one rule for which model to load for a manifest's encoder (the sidecar and ``decide``).

    A ``hash:<dim>`` id is self-describing (no files; anything configured is ignored). Otherwise the
    configured model (``policy.encoder_model``, ``decide --encoder-model``) when given, else the shipped
    MiniLM files for the builtin id, else the manifest's id. The builtin id and the builtin model name map
    to each other either way; the loaded encoder's id and dimension are checked against the manifest after.
    """
    if identity.encoder_id.startswith("hash:"):
        return identity.encoder_id
    if configured is not None:
        return configured
    return BUILTIN_MODEL if identity.encoder_id == BUILTIN_MODEL_ID else identity.encoder_id


def load_encoder(
    identity: EncoderIdentity,
    settings: PolicySettings,
    placement: DevicePlacement,
    backend: EncoderBackendSettings | None = None,
) -> Encoder:
    """Build and load the encoder the manifest names, on ``placement`` and the configured backend; check
    its id and dimension, and that the policy accepts the backend (an int8 file must be validated)."""
    backend = backend or EncoderBackendSettings(backend=EncoderBackend.TORCH)
    model = encoder_model_for(identity, settings.encoder_model)
    try:
        encoder_settings = identity.settings(model, device=placement.device)
    except ValueError as exc:
        raise ConfigError("policy.checkpoint_dir", f"manifest encoder settings are invalid: {exc}") from exc
    try:
        resolved = resolve_backend(
            backend.backend, placement.device, int8_validated=bool(identity.int8_validated_sha256)
        )
    except ValueError as exc:
        raise ConfigError("encoder.backend", str(exc)) from exc
    onnx_dir = Path(backend.onnx_dir) if backend.onnx_dir is not None else default_onnx_dir()
    choice = BackendChoice(resolved, onnx_dir, settings.cpu_threads)
    encoder = _load(encoder_settings, choice, model)
    problem = identity.serving_problem(*encoder_backend_identity(encoder))
    if problem is not None and backend.backend == "auto":
        # auto promises the fastest backend this policy is validated for: this int8 file is not one, so
        # the fp32 backend (the same function as the encoder the policy was trained with) serves.
        log.warning("encoder_backend_auto_uses_fp32", backend=CPU_FP32_BACKEND, reason=problem)
        encoder = _load(
            encoder_settings, BackendChoice(CPU_FP32_BACKEND, onnx_dir, settings.cpu_threads), model
        )
    elif problem is not None:
        raise ConfigError("encoder.backend", problem)
    if encoder.encoder_id != identity.encoder_id or encoder.dim != identity.dim:
        raise ConfigError(
            "policy.encoder_model",
            f"encoder {encoder.encoder_id!r} (dim {encoder.dim}) does not match the policy's "
            f"{identity.encoder_id!r} (dim {identity.dim})",
        )
    log.info("encoder_loaded", encoder=encoder.encoder_id, backend=encoder_backend_identity(encoder)[0])
    return encoder


def _load(encoder_settings: EncoderSettings, choice: BackendChoice, model: str) -> Encoder:
    """Load one backend; every failure becomes a ConfigError naming the setting to fix."""
    try:
        return load_backend_encoder(
            encoder_settings,
            choice,
            lambda reason: log.info("onnx_export_started", backend=choice.backend, reason=reason),
        )
    except OnnxRuntimeUnsupported as exc:
        raise ConfigError("encoder.backend", str(exc)) from exc
    except OnnxModelError as exc:
        raise ConfigError("encoder.onnx_dir", str(exc)) from exc
    except ImportError as exc:
        raise ConfigError(
            "encoder.backend", f"{choice.backend} needs a package that is missing: {exc}"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError("policy.encoder_model", f"cannot load encoder {model!r}: {exc}") from exc
