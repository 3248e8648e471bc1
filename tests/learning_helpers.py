"""Shared fixtures-as-functions for the learning-loop tests: tiny hash-encoder checkpoints and events."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import numpy as np
import torch

from barp_sidecar.errors import CheckpointError, RejectionReason
from barp_sidecar.gen.barp.v1 import trainer_pb2
from barp_sidecar.policy.checkpoint import CheckpointStore, EncoderIdentity, PolicyManifest, save_checkpoint
from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork
from tests.support.sidecar import tiny_calibration

ARMS = ("cheap", "mid", "strong")
DIM = 32
ENCODER = EncoderIdentity("hash:32", DIM, 64, "tail")
TAU_USD = 0.01


def tiny_network(seed: int = 0, models: tuple[str, ...] = ARMS) -> PolicyNetwork:
    torch.manual_seed(seed)
    return PolicyNetwork(
        PolicyArchitecture(
            embedding_dim=DIM, num_models=len(models), preference_hidden=8, preference_dim=4, head_hidden=16
        )
    )


def tiny_manifest(version: int, network: PolicyNetwork, models: tuple[str, ...] = ARMS) -> PolicyManifest:
    return PolicyManifest(
        version=version, models=models, encoder=ENCODER, tau_usd=TAU_USD, architecture=network.architecture
    )


def save_tiny_checkpoint(
    directory: Path, version: int = 1, seed: int = 0, models: tuple[str, ...] = ARMS
) -> Path:
    network = tiny_network(seed, models)
    save_checkpoint(directory, network, tiny_manifest(version, network, models), tiny_calibration())
    return directory


def publish_tiny(store: CheckpointStore, version: int, seed: int = 0, models: tuple[str, ...] = ARMS) -> None:
    network = tiny_network(seed, models)
    store.publish(network, tiny_manifest(version, network, models), tiny_calibration())


def random_event(
    rng: random.Random, sequence: int = 0, event_id: str | None = None
) -> trainer_pb2.RewardEvent:
    vector = np.array([rng.gauss(0, 1) for _ in range(DIM)], dtype=np.float32)
    vector /= np.linalg.norm(vector)
    model = rng.choice(ARMS)
    return trainer_pb2.RewardEvent(
        event_id=event_id or str(uuid.UUID(int=rng.getrandbits(128))),
        sequence=sequence,
        sidecar_id="test-sidecar",
        embedding=vector.tolist(),
        quality_weight=rng.random(),
        model=model,
        propensity=1.0 / len(ARMS),
        policy_version=1,
        quality=rng.random(),
        cost_usd=rng.random() * TAU_USD,
        decided_at_unix_s=1.7e9,
    )


def trainer_settings_yaml(data_dir: Path, **publish: object) -> str:
    """A cold-start trainer config for the tiny models (hash encoder dims)."""
    # A fixed every_events cadence unless the test asks for the early one (tests count versions).
    publish = {"min_every_events": 0, **publish}
    publish_lines = "".join(f"  {k}: {v}\n" for k, v in publish.items())
    return (
        "server:\n  host: 127.0.0.1\n  port: 0\n  grace_s: 1\n"
        f"storage:\n  data_dir: {data_dir}\n"
        "metrics:\n  enabled: false\n"
        "learner:\n  initial_policy: latest_or_cold\n"
        f"  arms: [{', '.join(ARMS)}]\n"
        f"  encoder_id: {ENCODER.encoder_id}\n  encoder_dim: {DIM}\n"
        f"  encoder_max_seq_length: {ENCODER.max_seq_length}\n  encoder_truncation: {ENCODER.truncation}\n"
        f"  tau_usd: {TAU_USD}\n  batch_size: 16\n"
        f"publish:\n  gate_min_holdout_events: 5\n{publish_lines}"
    )


class FakeRegistry:
    """The PolicyRegistry contract (current() / check / swap(new) -> old, models must match), no serving."""

    def __init__(self, initial) -> None:
        self._current = initial
        self.swapped_to: list[int] = []
        self.checked: list[int] = []

    def current(self):
        return self._current

    def check_models(self, models, source="policy") -> None:
        """A fixed model list (the real registry accepts another one when its catalog check passes)."""
        if tuple(models) != self._current.manifest.models:
            raise CheckpointError(
                f"{source}: models {list(models)} differ from the serving",
                RejectionReason.MODEL_LIST_MISMATCH,
            )

    def check(self, policy) -> None:
        """The real registry also checks the serving encoder backend; the fake records the call."""
        self.check_models(policy.manifest.models, policy.directory)
        self.checked.append(policy.version)

    def swap(self, new):
        if new.manifest.models != self._current.manifest.models:
            raise AssertionError("manager must reject mismatched models before swapping")
        old, self._current = self._current, new
        self.swapped_to.append(new.version)
        return old
