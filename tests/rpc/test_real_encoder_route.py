"""One Route through the real all-MiniLM-L6-v2 encoder (loads the shipped weights: a few seconds)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.policy.checkpoint import EncoderIdentity, PolicyManifest, save_checkpoint
from barp_sidecar.policy.encoder import BUILTIN_MODEL_ID
from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork
from tests.support.sidecar import running_sidecar, sidecar_settings

pytestmark = pytest.mark.real_encoder


async def test_route_with_the_real_encoder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    architecture = PolicyArchitecture(embedding_dim=384, num_models=3, head_hidden=32, head_layers=1)
    models = ("cheap", "mid", "best")
    manifest = PolicyManifest(
        version=5, models=models, encoder=EncoderIdentity(BUILTIN_MODEL_ID, 384, 128, "tail"), tau_usd=0.005,
        architecture=architecture,
    )  # fmt: skip
    save_checkpoint(tmp_path / "v5", PolicyNetwork(architecture), manifest)
    settings = sidecar_settings(tmp_path / "v5", policy={"cpu_threads": 1})
    async with running_sidecar(settings) as app:
        assert app.inference is not None and app.inference.encoder.settings.max_seq_length == 128
        assert app.batcher is not None
        # policy.cpu_threads is set on the main thread; the encoder runs on the batcher's worker thread,
        # whose intra-op pool must be that size too (docs/benchmarks.md, "Does the sidecar's forward pass
        # spread over two cores?").
        assert await app.batcher.call_in_worker(torch.get_num_threads) == 1
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            long_prompt = "context " * 400 + "Which model should answer this?"
            responses = [
                await stub.Route(router_pb2.RouteRequest(prompt=p), timeout=60)
                for p in ("What is 2 + 2?", long_prompt, "What is 2 + 2?")
            ]
    assert all(
        r.encoder == BUILTIN_MODEL_ID and r.policy_version == 5 and r.model in models for r in responses
    )
    first, _, repeat = responses
    assert [p.probability for p in first.probabilities] == [p.probability for p in repeat.probabilities]
    assert app.metrics.cache_hits._value.get() == 1.0
