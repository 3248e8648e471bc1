"""Device selection, embedding cache, registry swaps, batch inference and startup policy loading."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from barp_sidecar.errors import CheckpointError, ConfigError
from barp_sidecar.policy.checkpoint import CheckpointStore, EncoderIdentity, load_checkpoint
from barp_sidecar.policy.device import DevicePlacement, select_device
from barp_sidecar.policy.embedding_cache import EmbeddingCache, prompt_key
from barp_sidecar.policy.encoder import BUILTIN_MODEL, BUILTIN_MODEL_ID, EncoderSettings, HashingEncoder
from barp_sidecar.policy.inference import InferenceRequest, PolicyInference
from barp_sidecar.policy.loading import encoder_model_for, load_encoder, resolve_checkpoint_dir
from barp_sidecar.policy.registry import PolicyRegistry
from barp_sidecar.settings import PolicySettings
from tests.support.sidecar import ARMS, make_tiny_checkpoint

CPU = DevicePlacement("cpu", False)


@pytest.mark.parametrize(
    ("requested", "cuda", "expected"),
    [
        ("auto", True, DevicePlacement("cuda", True)),
        ("auto", False, DevicePlacement("cpu", False)),
        ("cpu", True, DevicePlacement("cpu", False)),
        ("cuda", True, DevicePlacement("cuda", True)),
        ("cuda:1", True, DevicePlacement("cuda:1", True)),
    ],
)
def test_select_device(requested: str, cuda: bool, expected: DevicePlacement) -> None:
    placement = select_device(requested, cuda_available=cuda)
    assert placement == expected
    assert placement.torch_dtype() == (torch.float16 if expected.half_precision else torch.float32)


@pytest.mark.parametrize(
    ("requested", "cuda"), [("cuda", False), ("cuda:0", False), ("tpu", True), ("gpu", True)]
)
def test_select_device_rejects_with_the_setting_name(requested: str, cuda: bool) -> None:
    with pytest.raises(ConfigError) as caught:
        select_device(requested, cuda_available=cuda)
    assert caught.value.key == "policy.device"


def test_embedding_cache_is_a_bounded_lru() -> None:
    cache = EmbeddingCache(2)
    a, b, c = (prompt_key(t) for t in ("a", "b", "c"))
    cache.put(a, np.ones(2))
    cache.put(b, np.zeros(2))
    assert cache.get(a) is not None  # a is now most recent
    cache.put(c, np.ones(2))
    assert len(cache) == 2 and cache.get(b) is None and cache.get(a) is not None
    disabled = EmbeddingCache(0)
    disabled.put(a, np.ones(2))
    assert len(disabled) == 0 and not disabled.enabled
    assert prompt_key("x" * 100_000) != prompt_key("x" * 100_001) and len(prompt_key("x")) == 16


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    store = CheckpointStore(tmp_path / "store")
    make_tiny_checkpoint(store.path(1), version=1, seed=1)
    make_tiny_checkpoint(store.path(2), version=2, seed=2)
    store.set_latest(2)
    return store


def encoder() -> HashingEncoder:
    return HashingEncoder(EncoderSettings(model="hash:32", max_seq_length=64, truncation="tail"))


def test_registry_swap_is_atomic_and_checks_compatibility(store: CheckpointStore, tmp_path: Path) -> None:
    registry = PolicyRegistry(load_checkpoint(store.path(1)))
    old = registry.swap(load_checkpoint(store.path(2)))
    assert old.version == 1 and registry.current().version == 2
    other_models = make_tiny_checkpoint(tmp_path / "other", models=("x", "y"))
    with pytest.raises(CheckpointError, match="models"):
        registry.swap(load_checkpoint(other_models))
    assert registry.current().version == 2


def make_inference(registry: PolicyRegistry, placement: DevicePlacement = CPU, cache_entries: int = 100):
    return PolicyInference(
        encoder(),
        registry,
        placement,
        max_batch_tokens=64,
        cache=EmbeddingCache(cache_entries),
        observer=None,
    )


PROMPTS = [f"prompt {i} " + "word " * (i % 7) * 9 for i in range(24)]


def test_batch_results_match_one_by_one_results(store: CheckpointStore) -> None:
    registry = PolicyRegistry(load_checkpoint(store.path(2)))
    batched = make_inference(registry, cache_entries=0).run_batch(
        [InferenceRequest(p, (i % 5) / 4) for i, p in enumerate(PROMPTS)]
    )
    single = make_inference(registry, cache_entries=0)
    for i, prompt in enumerate(PROMPTS):
        (one,) = single.run_batch([InferenceRequest(prompt, (i % 5) / 4)])
        np.testing.assert_allclose(batched[i].probabilities, one.probabilities, atol=1e-6)
        np.testing.assert_array_equal(batched[i].embedding, one.embedding)


def test_masks_zero_the_disallowed_arms(store: CheckpointStore) -> None:
    inference = make_inference(PolicyRegistry(load_checkpoint(store.path(2))))
    results = inference.run_batch(
        [InferenceRequest("x", 0.5, (True, False, True, False)), InferenceRequest("y", 0.5, None)]
    )
    assert results[0].probabilities[1] == 0.0 and results[0].probabilities[3] == 0.0
    assert results[0].probabilities.sum() == pytest.approx(1.0)
    assert (results[1].probabilities > 0).all()


def test_cache_hits_and_duplicates_within_a_batch(store: CheckpointStore) -> None:
    inference = make_inference(PolicyRegistry(load_checkpoint(store.path(2))))
    first = inference.run_batch([InferenceRequest("same", 0.5), InferenceRequest("same", 0.9)])
    assert [r.cache_hit for r in first] == [False, False]
    second = inference.run_batch([InferenceRequest("same", 0.5), InferenceRequest("new", 0.5)])
    assert [r.cache_hit for r in second] == [True, False]
    np.testing.assert_array_equal(first[0].embedding, second[0].embedding)
    np.testing.assert_allclose(first[0].probabilities, second[0].probabilities)


def test_long_prompts_are_encoded_in_their_own_pass(store: CheckpointStore) -> None:
    widths: list[int] = []

    class Counting(HashingEncoder):
        def encode_token_ids(self, token_ids):
            widths.append(max(len(ids) for ids in token_ids))
            return super().encode_token_ids(token_ids)

    inference = PolicyInference(
        Counting(EncoderSettings(model="hash:32", max_seq_length=64)),
        PolicyRegistry(load_checkpoint(store.path(2))),
        CPU,
        max_batch_tokens=4096,
        cache=EmbeddingCache(0),
    )
    inference.run_batch(
        [InferenceRequest(f"short {i}", 0.5) for i in range(12)] + [InferenceRequest("w " * 60, 0.5)]
    )
    assert sorted(widths) == [2, 60]


def test_a_batch_never_mixes_versions_during_swaps(store: CheckpointStore) -> None:
    registry = PolicyRegistry(load_checkpoint(store.path(1)))
    policies = [load_checkpoint(store.path(1)), load_checkpoint(store.path(2))]
    inference = make_inference(registry)
    stop = threading.Event()

    def swapper() -> None:
        i = 0
        while not stop.is_set():
            registry.swap(policies[i % 2])
            i += 1

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        for _ in range(200):
            results = inference.run_batch([InferenceRequest(p, 0.5) for p in PROMPTS[:8]])
            assert len({r.policy_version for r in results}) == 1
    finally:
        stop.set()
        thread.join()


def test_half_precision_path_runs_and_agrees_with_float32(store: CheckpointStore) -> None:
    """The GPU path moves a copy of the network to half precision; exercised here on the CPU."""
    registry = PolicyRegistry(load_checkpoint(store.path(2)))
    full = make_inference(registry).run_batch([InferenceRequest(p, 0.7) for p in PROMPTS])
    half = make_inference(registry, DevicePlacement("cpu", True)).run_batch(
        [InferenceRequest(p, 0.7) for p in PROMPTS]
    )
    assert registry.current().network.output.weight.dtype == torch.float32  # registry copy untouched
    for a, b in zip(full, half, strict=True):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=2e-2)
        assert b.probabilities.dtype == np.float64


def test_resolve_checkpoint_dir(store: CheckpointStore, tmp_path: Path) -> None:
    assert resolve_checkpoint_dir(str(store.root)) == store.path(2)
    assert resolve_checkpoint_dir(str(store.path(1))) == store.path(1)
    with pytest.raises(ConfigError) as caught:
        resolve_checkpoint_dir(str(tmp_path / "nowhere"))
    assert caught.value.key == "policy.checkpoint_dir"


def test_encoder_model_mapping() -> None:
    builtin = EncoderIdentity(BUILTIN_MODEL_ID, 384, 256, "tail")
    assert encoder_model_for(builtin, BUILTIN_MODEL) == BUILTIN_MODEL
    assert encoder_model_for(builtin, "/models/minilm") == "/models/minilm"
    assert encoder_model_for(EncoderIdentity("hash:32", 32, 64, "tail"), BUILTIN_MODEL) == "hash:32"


def test_load_encoder_checks_the_manifest_identity() -> None:
    identity = EncoderIdentity("hash:32", 32, 64, "head")
    loaded = load_encoder(identity, PolicySettings(), CPU)
    assert loaded.encoder_id == "hash:32" and loaded.settings.truncation == "head"
    assert loaded.settings.max_seq_length == 64
    wrong_dim = dataclasses.replace(identity, encoder_id="hash:16")
    mismatch = dataclasses.replace(wrong_dim, dim=32)
    with pytest.raises(ConfigError) as caught:
        load_encoder(mismatch, PolicySettings(), CPU)
    assert caught.value.key == "policy.encoder_model"


def test_arms_are_the_tiny_policy_arms(store: CheckpointStore) -> None:
    assert PolicyRegistry(load_checkpoint(store.path(1))).models == ARMS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_half_precision_serving_matches_cpu(store: CheckpointStore) -> None:
    placement = select_device("auto", cuda_available=True)
    registry = PolicyRegistry(load_checkpoint(store.path(2)))
    on_gpu = make_inference(registry, placement).run_batch([InferenceRequest(p, 0.3) for p in PROMPTS])
    on_cpu = make_inference(registry).run_batch([InferenceRequest(p, 0.3) for p in PROMPTS])
    for gpu, cpu in zip(on_gpu, on_cpu, strict=True):
        np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, atol=2e-2)
