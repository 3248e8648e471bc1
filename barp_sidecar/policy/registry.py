"""The serving registry: which policy version answers right now.

Owns one reference to the serving ``LoadedPolicy`` (immutable: manifest with its version, network, directory).
``current()`` is a plain attribute
read, so the inference thread reads it ONCE per batch and a batch never mixes versions; ``swap`` replaces
the snapshot atomically (one reference assignment), so in-flight batches finish on the old one. Knows
nothing about files, watching or gRPC: whoever loads a new checkpoint (the hot-swap watcher, Admin
PinPolicy) calls ``swap``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from barp_sidecar.errors import CheckpointError, RejectionReason
from barp_sidecar.policy.checkpoint import LoadedPolicy

log = structlog.get_logger(__name__)


class PolicyRegistry:
    """Holds the current policy. The encoder identity is fixed at construction: a swap must match it. The
    model list may change (a model-pool change) once a model check is set (``set_model_check``: the
    catalog must have every model); without one it is fixed too."""

    def __init__(self, initial: LoadedPolicy, serving_backend: tuple[str, str] = ("torch", "")) -> None:
        """``serving_backend`` = (encoder backend, its model file's sha256): every policy must accept it."""
        self._serving_backend = serving_backend
        self._check_backend(initial)
        _report_missing_calibration(initial)
        self._current = initial
        self._model_check: Callable[[tuple[str, ...]], str | None] | None = None
        self._encoder = initial.manifest.encoder.core()
        self._swap_lock = threading.Lock()

    def set_model_check(self, check: Callable[[tuple[str, ...]], str | None]) -> None:
        """Accept policies with another model list when ``check(models)`` returns None; otherwise its text
        (e.g. the models the catalog lacks) rejects them with ``catalog_missing_model``."""
        self._model_check = check

    def check_models(self, models: tuple[str, ...], source: object = "policy") -> None:
        """Raise CheckpointError unless a policy with ``models`` could serve here."""
        serving = self._current.manifest.models
        if models == serving:
            return
        if self._model_check is None:
            raise CheckpointError(
                f"{source}: models {list(models)} differ from the serving {list(serving)}",
                RejectionReason.MODEL_LIST_MISMATCH,
            )
        problem = self._model_check(models)
        if problem is not None:
            raise CheckpointError(f"{source}: {problem}", RejectionReason.CATALOG_MISSING_MODEL)

    def check(self, policy: LoadedPolicy) -> None:
        """Raise CheckpointError unless ``policy`` could be swapped in (models, encoder, serving backend)."""
        manifest = policy.manifest
        self.check_models(manifest.models, policy.directory)
        if manifest.encoder.core() != self._encoder:
            raise CheckpointError(
                f"{policy.directory}: encoder {manifest.encoder} differs from the serving {self._encoder}",
                RejectionReason.ENCODER_MISMATCH,
            )
        self._check_backend(policy)

    def _check_backend(self, policy: LoadedPolicy) -> None:
        problem = policy.manifest.encoder.serving_problem(*self._serving_backend)
        if problem is not None:
            raise CheckpointError(f"{policy.directory}: {problem}", RejectionReason.ENCODER_MISMATCH)

    @property
    def models(self) -> tuple[str, ...]:
        """The serving policy's models (a model-pool change swaps in another list)."""
        return self._current.manifest.models

    @property
    def encoder_id(self) -> str:
        return self._encoder.encoder_id

    def current(self) -> LoadedPolicy:
        return self._current

    def swap(self, new: LoadedPolicy) -> LoadedPolicy:
        """Make ``new`` current; returns the previous policy. Raises CheckpointError if incompatible."""
        self.check(new)
        with self._swap_lock:
            old = self._current
            self._current = new
        log.info("policy_swapped", old=old.version, new=new.version)
        _report_missing_calibration(new)
        return old


def _report_missing_calibration(policy: LoadedPolicy) -> None:
    """Log, once per version that starts serving, that it has no calibration set: its dry run used random
    unit vectors, not real prompt embeddings (``barp-trainer calibrate`` gives it one)."""
    if policy.calibration is None:
        log.warning(
            "policy_calibration_missing",
            version=policy.version,
            directory=str(policy.directory),
            dry_run="random unit vectors",
            fix="barp-trainer calibrate <checkpoint>",
        )
