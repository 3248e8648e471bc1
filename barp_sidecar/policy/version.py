"""``PolicyVersion``: the one record that names a policy version without holding its weights.

What the trainer announces (WatchPolicy), what a sidecar's manager knows and Admin lists, what a checkpoint
store holds: version, weights sha256, models, encoder, and where it is. The weights themselves travel as a
``LoadedPolicy`` (``policy.checkpoint``), which is what serves. Plain data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from barp_sidecar.policy.checkpoint import PolicyManifest


@dataclass(frozen=True)
class PolicyVersion:
    """A policy version by name. Fields other than ``version`` and ``weights_sha256`` may be unknown
    (empty / 0 / None), e.g. in a trainer announcement (no directory) or for a remote version."""

    version: int
    weights_sha256: str
    models: tuple[str, ...]
    encoder: str = ""
    created_at_unix_s: float = 0.0
    # Bytes of the checkpoint directory (announcements; 0 = unknown).
    size_bytes: int = 0
    # Where it came from: "builtin", "trainer", a directory, ...
    source: str = ""
    # A local checkpoint directory holding it (None = must be fetched).
    directory: Path | None = None

    @classmethod
    def of(
        cls, manifest: PolicyManifest, *, source: str = "", directory: Path | None = None, size_bytes: int = 0
    ) -> PolicyVersion:
        """The record of a checkpoint's manifest."""
        return cls(
            version=manifest.version,
            weights_sha256=manifest.weights_sha256,
            models=manifest.models,
            encoder=manifest.encoder.encoder_id,
            created_at_unix_s=manifest.created_at_unix_s,
            size_bytes=size_bytes,
            source=source,
            directory=directory,
        )
