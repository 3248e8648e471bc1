"""The sidecar's side of a model-pool change: the registry accepts another model list only when the catalog
has every model; routing decides over the models of the version that answered (a swap between ``prepare``
and inference) and never picks a retired model, whatever the exploration; the catalog is re-read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from barp_sidecar.batching.batcher import MicroBatcher
from barp_sidecar.catalog_reload import ServingCatalog
from barp_sidecar.domain import ExplorationMode, RouteCommand
from barp_sidecar.errors import CheckpointError, FailedPrecondition, RejectionReason
from barp_sidecar.policy.checkpoint import load_checkpoint, save_checkpoint
from barp_sidecar.policy.inference import InferenceRequest, InferenceResult
from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork
from barp_sidecar.policy.registry import PolicyRegistry
from barp_sidecar.providers.catalog import load_catalog
from barp_sidecar.providers.forwarder import Forwarder
from barp_sidecar.providers.metrics import ProviderMetrics
from barp_sidecar.providers.pool import ProviderPool
from barp_sidecar.routing.completion import CompletionService
from barp_sidecar.routing.service import RoutingService
from barp_sidecar.settings import ProvidersSettings, RoutingSettings, RoutingTextMode
from tests.learning_helpers import ENCODER, TAU_USD
from tests.support.sidecar import tiny_calibration

OLD = ("a", "b", "c")
NEW = ("a", "b", "c", "d")


def reward_checkpoint(directory: Path, models: tuple[str, ...], version: int, shares=()) -> Path:
    from barp_sidecar.policy.checkpoint import PolicyManifest

    architecture = PolicyArchitecture(
        embedding_dim=ENCODER.dim,
        num_models=len(models),
        head_layers=0,
        kind="reward_model",
        exploration="inverse_gap",
        exploration_share=shares,
    )
    network = PolicyNetwork(architecture)
    manifest = PolicyManifest(
        version=version, models=models, encoder=ENCODER, tau_usd=TAU_USD, architecture=architecture
    )
    save_checkpoint(directory, network, manifest, tiny_calibration())
    return directory


def catalog_file(path: Path, models: tuple[str, ...], enabled: tuple[str, ...] = ()) -> Path:
    entries = []
    for model in models:
        entry: dict[str, object] = {"arm": model, "enabled": model in enabled}
        if model in enabled:
            entry.update(base_url="http://127.0.0.1:9/v1", upstream_model=model)
        entries.append(entry)
    path.write_text(yaml.safe_dump({"providers": entries}))
    return path


def serving_catalog(tmp_path: Path, registry: PolicyRegistry, models: tuple[str, ...]) -> ServingCatalog:
    file = catalog_file(tmp_path / "catalog.yaml", models)
    catalog = load_catalog(file)
    metrics = ProviderMetrics(CollectorRegistry())
    pool = ProviderPool(catalog, ProvidersSettings(catalog_file=str(file)), {}, metrics)
    forwarder = Forwarder(catalog, pool, None, metrics, 0)
    routing = RoutingService(
        models=registry.models,
        encoder_id="hash",
        batcher=None,  # type: ignore[arg-type]  # never routes here
        settings=RoutingSettings(),
        max_prompt_bytes=1024,
        rng=np.random.default_rng(0),
    )
    completion = CompletionService(
        routing=routing,
        forwarder=forwarder,
        callable_models=frozenset(catalog.enabled_models()),
        routing_text_mode=RoutingTextMode.LAST_USER,
        routing_text_max_bytes=4096,
    )
    return ServingCatalog(catalog, str(file), {}, pool, forwarder, completion, registry)


async def test_another_model_list_swaps_in_once_the_catalog_has_every_model(tmp_path):
    registry = PolicyRegistry(load_checkpoint(reward_checkpoint(tmp_path / "v1", OLD, 1)))
    bigger = load_checkpoint(reward_checkpoint(tmp_path / "v2", NEW, 2))
    with pytest.raises(CheckpointError) as fixed:
        registry.check(bigger)  # no model check set: the list is fixed (the old behaviour)
    assert fixed.value.reason is RejectionReason.MODEL_LIST_MISMATCH

    catalog = serving_catalog(tmp_path, registry, OLD)
    with pytest.raises(CheckpointError) as missing:
        registry.swap(bigger)
    assert missing.value.reason is RejectionReason.CATALOG_MISSING_MODEL and "['d']" in str(missing.value)
    assert registry.models == OLD  # the old version keeps serving

    catalog_file(tmp_path / "catalog.yaml", NEW, enabled=("d",))
    assert await catalog.reload()
    assert catalog.completion.callable_models == frozenset({"d"})  # a provider for the new entry
    registry.swap(bigger)
    assert registry.models == NEW

    (tmp_path / "catalog.yaml").write_text("providers: [{arm: x, enabled: maybe}]\n")
    assert not await catalog.reload()  # refused, logged; nothing changes
    assert catalog.failures == 1 and catalog.catalog.models == NEW


class SwappingScorer:
    """Answers with the version ``answer`` (its models, retired set) whatever the request was prepared for;
    prefers the model ``favourite`` with probability 0.9."""

    def __init__(self, models: tuple[str, ...], favourite: str, retired: frozenset[str] = frozenset()):
        self.models, self.favourite, self.retired = models, favourite, retired

    def __call__(self, requests: list[InferenceRequest]) -> list[InferenceResult]:
        results = []
        for _ in requests:
            p = np.array([0.9 if m == self.favourite else 0.0 for m in self.models])
            rest = [i for i, m in enumerate(self.models) if m != self.favourite and m not in self.retired]
            p[rest] = 0.1 / len(rest)
            results.append(InferenceResult(p, np.zeros(4, np.float32), 7, False, self.models, self.retired))
        return results


async def route_many(scorer, prepared_for: tuple[str, ...], command: RouteCommand, count: int):
    batcher = MicroBatcher(scorer, max_batch_size=8, max_wait_ms=0.0, max_pending=64)
    batcher.start()
    service = RoutingService(
        models=OLD,
        encoder_id="hash",
        batcher=batcher,
        settings=RoutingSettings(default_exploration=ExplorationMode.EPSILON_GREEDY, epsilon=1.0),
        max_prompt_bytes=1024,
        rng=np.random.default_rng(0),
        serving_models=lambda: prepared_for,
    )
    try:
        return [await service.route(command) for _ in range(count)]
    finally:
        await batcher.close()


async def test_a_decision_uses_the_models_of_the_version_that_answered():
    # Prepared while the old list served; the new version (with "d") answered.
    decisions = await route_many(SwappingScorer(NEW, "d"), OLD, RouteCommand(prompt="p"), 60)
    assert all(d.models == NEW and len(d.allowed) == 4 for d in decisions)
    assert {d.model for d in decisions} == set(NEW)  # ε = 1: uniform over the answering version's models
    restricted = await route_many(
        SwappingScorer(NEW, "d"), OLD, RouteCommand(prompt="p", allowed_models=("a", "b")), 40
    )
    assert {d.model for d in restricted} == {"a", "b"}
    # Prepared while "c" and "d" served, answered by a version that dropped "c": "c" is no choice any more.
    dropped = await route_many(
        SwappingScorer(("a", "b", "d"), "d"), NEW, RouteCommand(prompt="p", allowed_models=("c", "d")), 20
    )
    assert {d.model for d in dropped} == {"d"} and all(d.models == ("a", "b", "d") for d in dropped)
    with pytest.raises(FailedPrecondition, match="left the model pool"):
        await route_many(
            SwappingScorer(("a", "b", "d"), "d"), NEW, RouteCommand(prompt="p", allowed_models=("c",)), 1
        )


async def test_no_exploration_mode_picks_a_retired_model():
    scorer = SwappingScorer(NEW, "b", retired=frozenset({"a"}))
    decisions = await route_many(scorer, NEW, RouteCommand(prompt="p"), 80)  # ε = 1: uniform exploration
    assert "a" not in {d.model for d in decisions}
    assert all(d.allowed == (False, True, True, True) for d in decisions)
    for d in decisions:  # exact propensities over the three models left
        assert d.propensity == pytest.approx(1 / 3)
    only_retired = await route_many(scorer, NEW, RouteCommand(prompt="p", allowed_models=("a",)), 3)
    assert {d.model for d in only_retired} == {"a"}  # the caller allowed nothing else: served, not refused


def test_the_manifest_names_its_retired_models(tmp_path):
    loaded = load_checkpoint(reward_checkpoint(tmp_path / "v3", NEW, 3, shares=(0.0, 1.0, 1.0, 0.3)))
    assert loaded.manifest.retired_models() == frozenset({"a"})
    plain = dataclasses.replace(
        loaded.manifest, architecture=dataclasses.replace(loaded.manifest.architecture, exploration_share=())
    )
    assert plain.retired_models() == frozenset()
