"""Non-finite policies: finite but huge weights are rejected at load (random unit vectors, not zeros, when
the checkpoint has no calibration set: tests/policy/test_calibration.py covers the set),
and a policy that still yields non-finite probabilities at inference is never served (real channel)."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from barp_sidecar.errors import CheckpointError
from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.policy.checkpoint import LoadedPolicy, load_checkpoint, save_checkpoint
from barp_sidecar.policy.device import select_device
from barp_sidecar.policy.embedding_cache import EmbeddingCache
from barp_sidecar.policy.encoder import EncoderSettings, HashingEncoder
from barp_sidecar.policy.inference import InferenceRequest, NonFiniteOutput, PolicyInference
from barp_sidecar.policy.registry import PolicyRegistry
from tests.support.sidecar import make_tiny_checkpoint, running_sidecar, sidecar_settings


def huge(policy: LoadedPolicy, version: int) -> LoadedPolicy:
    """The same policy with finite but huge weights (±1e38) on the embedding's inputs of the first hidden
    layer: a zero embedding never touches them, a real one overflows."""
    network = copy.deepcopy(policy.network)
    dim = policy.manifest.encoder.dim
    with torch.no_grad():
        first = network.hidden_layers[0].weight
        first[:, :dim] = torch.where(first[:, :dim] >= 0, 1e38, -1e38)
    manifest = dataclasses.replace(policy.manifest, version=version)
    return LoadedPolicy(manifest=manifest, network=network, directory=policy.directory)


def test_huge_weights_pass_a_zero_embedding_dry_run_but_not_random_unit_vectors(tmp_path: Path) -> None:
    """A checkpoint without a calibration set (older manifests) is dry-run on random unit vectors."""
    good = load_checkpoint(make_tiny_checkpoint(tmp_path / "v1"))
    bad = huge(good, 2)
    dim = good.manifest.encoder.dim
    with torch.inference_mode():
        at_zero = bad.network.probabilities(torch.zeros(2, dim), torch.tensor([0.0, 1.0]), None)
    assert torch.isfinite(at_zero).all(), "the old dry run would have accepted it"
    save_checkpoint(tmp_path / "v2", bad.network, bad.manifest)
    with pytest.raises(CheckpointError, match=r"non-finite logits or probabilities .*random unit vectors"):
        load_checkpoint(tmp_path / "v2")


async def test_a_nonfinite_output_falls_back_to_the_previous_version(tmp_path: Path) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "policy" / "v1")
    async with running_sidecar(sidecar_settings(checkpoint)) as app:
        assert app.registry is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            await stub.Route(router_pb2.RouteRequest(prompt="served by v1"), timeout=10)
            # A bad version reaches the registry (the path validation guards is bypassed on purpose).
            app.registry.swap(huge(app.registry.current(), 2))
            with capture_logs() as logs:
                responses = [
                    await stub.Route(router_pb2.RouteRequest(prompt=f"question {i} about things"), timeout=10)
                    for i in range(5)
                ]
        metrics = app.metrics.registry.get_sample_value(
            "barp_policy_nonfinite_outputs_total", {"outcome": "fell_back"}
        )
    for response in responses:
        probabilities = [p.probability for p in response.probabilities]
        assert all(math.isfinite(p) for p in probabilities)
        assert math.isclose(sum(probabilities), 1.0, rel_tol=1e-5)
        assert response.policy_version == 1, "answered by the version before the bad one"
    assert metrics == 5
    events = [entry for entry in logs if entry["event"] == "policy_output_nonfinite"]
    assert events and events[0]["version"] == 2 and events[0]["fell_back_to"] == 1


def test_without_an_earlier_version_the_prompt_fails_alone(tmp_path: Path) -> None:
    good = load_checkpoint(make_tiny_checkpoint(tmp_path / "v1"))
    encoder = HashingEncoder(EncoderSettings(model="hash:32", max_seq_length=64))
    inference = PolicyInference(
        encoder,
        PolicyRegistry(huge(good, 1)),
        select_device("cpu", False),
        max_batch_tokens=4096,
        cache=EmbeddingCache(0),
    )
    prompts = ["a question", "another", "the third prompt", "what is 2 + 2", "x y z", "hello there"]
    results = inference.run_batch([InferenceRequest(p, 0.5) for p in prompts])
    refused = [r for r in results if isinstance(r, NonFiniteOutput)]
    served = [r for r in results if not isinstance(r, NonFiniteOutput)]
    assert refused, "the bad policy's non-finite rows are refused"
    # Rows the same batch got right are still served: a refusal fails only its own caller.
    assert served and all(np.isfinite(r.probabilities).all() for r in served)
