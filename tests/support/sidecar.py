"""Helpers for sidecar tests: a tiny hash-encoder checkpoint and an in-process sidecar on 127.0.0.1:0."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch

from barp_sidecar.app import SidecarApp
from barp_sidecar.policy.calibration import CalibrationSet, select_calibration
from barp_sidecar.policy.checkpoint import EncoderIdentity, PolicyManifest, save_checkpoint
from barp_sidecar.policy.encoder import HashingEncoder
from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork
from barp_sidecar.settings import Settings, build_settings, validate

ARMS = ("small-model", "medium-model", "large-model", "huge-model")
HASH_ENCODER = EncoderIdentity("hash:32", 32, 64, "tail")


# Prompts whose hash:32 embeddings form the tiny policy's calibration set.
CALIBRATION_PROMPTS = (
    "hi",
    "Write a Python function to reverse a list.",
    "Which planet is closest to the Sun? (A) Venus (B) Mercury (C) Mars (D) Earth",
    "Summarise the plot of Hamlet in two sentences.",
    "Solve for x: 2x + 3 = 11.",
    "Translate 'good morning' into German.",
)


def tiny_calibration() -> CalibrationSet:
    """The hash:32 embeddings of ``CALIBRATION_PROMPTS`` as a calibration set (what a producer stores)."""
    encoder = HashingEncoder(HASH_ENCODER.settings("hash:32"))
    calibration = select_calibration(encoder.load().encode(list(CALIBRATION_PROMPTS)))
    assert calibration is not None
    return calibration


def make_tiny_checkpoint(
    directory: Path,
    *,
    version: int = 1,
    seed: int = 0,
    models: tuple[str, ...] = ARMS,
    calibrated: bool = True,
) -> Path:
    """Save a small randomly initialised policy for the ``hash:32`` encoder into ``directory``, with a
    calibration set of (hash:32) prompt embeddings unless ``calibrated`` is False (an older checkpoint)."""
    torch.manual_seed(seed)
    architecture = PolicyArchitecture(
        embedding_dim=32,
        num_models=len(models),
        preference_hidden=8,
        preference_dim=4,
        head_hidden=16,
        head_layers=1,
    )
    network = PolicyNetwork(architecture)
    # Large output weights make the policy's preferences sharp, so decisions vary across prompts.
    with torch.no_grad():
        network.hidden_layers[0].weight.mul_(6.0)
        network.output.weight.mul_(8.0)
        network.output.bias.zero_()
    manifest = PolicyManifest(
        version=version, models=models, encoder=HASH_ENCODER, tau_usd=0.005, architecture=architecture
    )
    save_checkpoint(directory, network, manifest, tiny_calibration() if calibrated else None)
    return directory


def sidecar_settings(checkpoint_dir: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a test sidecar: ephemeral ports, no admin, the given checkpoint, overrides per section."""
    data: dict[str, dict[str, Any]] = {
        "server": {"port": 0, "grace_s": 2.0},
        "metrics": {"port": 0},
        "admin": {"enabled": False},
        "policy": {"checkpoint_dir": str(checkpoint_dir), "device": "cpu"},
        "routing": {"seed": 7},
        # The reward spool is durable state: keep it next to the test's checkpoint, never in the checkout.
        "rewards": {"spool_dir": str(Path(checkpoint_dir).parent / "barp-spool")},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    # Through the same parsing as a YAML file, so values are coerced and checked as for a user.
    return validate(build_settings(Settings, data))


@contextlib.asynccontextmanager
async def running_sidecar(settings: Settings) -> AsyncIterator[SidecarApp]:
    app = SidecarApp.build(settings)
    await app.start()
    try:
        yield app
    finally:
        await app.close()
