"""The trainer's starting policy and the hub that announces published versions.

Owns choosing the initial policy (resume from the store's LATEST, the shipped default, or a cold uniform
network) and ``PolicyAnnouncer``, which WatchPolicy streams wait on. Knows nothing about gRPC.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass

import torch

from barp_sidecar.policy.builtin import builtin_policy_dir
from barp_sidecar.policy.calibration import CalibrationSet
from barp_sidecar.policy.checkpoint import (
    WEIGHTS_FILE,
    CheckpointStore,
    EncoderIdentity,
    LoadedPolicy,
    PolicyManifest,
    load_checkpoint,
)
from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork
from barp_sidecar.policy.version import PolicyVersion
from trainer.service.learner import uniform_network
from trainer.service.settings import LearnerSettings


@dataclass(frozen=True)
class StartingPolicy:
    """The network to train from, its manifest, the log offset its weights already include, and the
    calibration set stored with it (carried into versions published before any event arrives)."""

    network: PolicyNetwork
    manifest: PolicyManifest
    log_offset: int
    source: str
    calibration: CalibrationSet | None = None


def cold_policy(settings: LearnerSettings) -> StartingPolicy:
    assert settings.tau_usd is not None
    torch.manual_seed(settings.seed)
    if settings.architecture_kind == "reward_model":
        # Linear per-model outcome regression, fitted in closed form (reward_model_learner.py).
        regions = settings.exploration_regions if settings.exploration_shape == "inverse_gap" else 0
        architecture = PolicyArchitecture(
            embedding_dim=settings.encoder_dim,
            num_models=len(settings.arms),
            head_layers=0,
            kind="reward_model",
            exploration=settings.exploration_shape,
            # Regions narrow inverse-gap weighting's gaps; a Boltzmann policy has none.
            exploration_regions=regions,
            region_intercepts=bool(regions) and settings.region_intercept_lambda > 0,
        )
    else:
        architecture = PolicyArchitecture(embedding_dim=settings.encoder_dim, num_models=len(settings.arms))
    network = uniform_network(PolicyNetwork(architecture))
    manifest = PolicyManifest(
        version=1,
        models=tuple(settings.arms),
        encoder=EncoderIdentity(
            settings.encoder_id,
            settings.encoder_dim,
            settings.encoder_max_seq_length,
            settings.encoder_truncation,
        ),
        tau_usd=settings.tau_usd,
        architecture=architecture,
        training={"initial_policy": "cold", "seed": settings.seed, "log_offset": 0},
    )
    return StartingPolicy(network, manifest, 0, "cold")


def _from_loaded(loaded: LoadedPolicy, source: str, settings: LearnerSettings) -> StartingPolicy:
    network = copy.deepcopy(loaded.network)
    manifest = loaded.manifest
    if settings.tau_usd is not None and settings.tau_usd != manifest.tau_usd:
        manifest = PolicyManifest(**{**manifest.__dict__, "tau_usd": settings.tau_usd})
    offset = int(manifest.training.get("log_offset", 0)) if source == "latest" else 0
    return StartingPolicy(network, manifest, offset, source, loaded.calibration)


def starting_policy(settings: LearnerSettings, store: CheckpointStore) -> StartingPolicy:
    """Resume from the store's LATEST when allowed and present, else builtin or cold as configured."""
    if settings.initial_policy.startswith("latest_or_"):
        latest = store.latest_version()
        if latest is not None:
            return _from_loaded(load_checkpoint(store.path(latest)), "latest", settings)
    if settings.initial_policy in ("cold", "latest_or_cold"):
        return cold_policy(settings)
    return _from_loaded(load_checkpoint(builtin_policy_dir()), "builtin", settings)


def announcement_for(store: CheckpointStore, manifest: PolicyManifest) -> PolicyVersion:
    directory = store.path(manifest.version)
    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    assert (directory / WEIGHTS_FILE).is_file()
    return PolicyVersion.of(manifest, source="trainer", directory=directory, size_bytes=size)


class PolicyAnnouncer:
    """Latest published version; WatchPolicy streams ``await wait_newer(v)``. Event-loop only."""

    def __init__(self) -> None:
        self._current: PolicyVersion | None = None
        self._changed = asyncio.Condition()
        self._closed = False

    @property
    def current(self) -> PolicyVersion | None:
        return self._current

    async def publish(self, announcement: PolicyVersion) -> None:
        async with self._changed:
            self._current = announcement
            self._changed.notify_all()

    async def close(self) -> None:
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    async def wait_newer(self, version: int) -> PolicyVersion | None:
        """The current announcement once its version differs from ``version``; None when closing."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._closed or (self._current is not None and self._current.version != version)
            )
            return None if self._closed else self._current
