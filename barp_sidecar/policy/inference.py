"""Batch inference: prompts -> embeddings (cache, length-grouped encoder passes) -> policy probabilities.

Owns the encoder, the embedding cache and a device copy of the current policy network. Runs ONLY on the
micro-batcher's worker thread (DESIGN §5): nothing here is thread-safe, nothing here is async. Reads the
registry once per batch, so every result of a batch comes from the same policy version, except that a
non-finite output is never served: that prompt is re-scored by the version that served before (its
result carries that version; counted and logged) or fails alone with ``NonFiniteOutput`` (UNAVAILABLE).
Knows nothing about gRPC, requests' deadlines or exploration.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import structlog
import torch

from barp_sidecar.batching.token_groups import plan_length_groups
from barp_sidecar.errors import Unavailable
from barp_sidecar.policy.checkpoint import LoadedPolicy
from barp_sidecar.policy.device import DevicePlacement
from barp_sidecar.policy.embedding_cache import EmbeddingCache, prompt_key
from barp_sidecar.policy.encoder import Encoder
from barp_sidecar.policy.registry import PolicyRegistry

log = structlog.get_logger("barp_sidecar.policy.inference")
# [CLS] and [SEP] add two positions to every encoded prompt.
SPECIAL_TOKENS = 2


@dataclass(frozen=True)
class InferenceRequest:
    """One prompt to score. ``allowed`` is a per-model mask in the order of ``models`` (None = all); when
    the serving model list changed since (a pool change), the mask is mapped onto it by name."""

    prompt: str
    quality_weight: float
    allowed: tuple[bool, ...] | None = None
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class InferenceResult:
    """π(·|x, w) over every model of ``models`` (masked ones exactly 0), h(x), and the version that computed
    them; ``retired``: that version's masked (retired) models, which no exploration may pick."""

    probabilities: np.ndarray
    embedding: np.ndarray
    policy_version: int
    cache_hit: bool
    models: tuple[str, ...] = ()
    retired: frozenset[str] = frozenset()


def _mask_for(models: tuple[str, ...], request: InferenceRequest) -> tuple[bool, ...]:
    """The request's mask in the order of ``models`` (by name when its model list differs; a model the
    request's list lacks is not allowed). A row left with nothing allowed gets every model: the routing
    layer re-checks the answer's models and refuses the request (NoConfiguredModel) rather than the batch
    failing on an all-masked row."""
    assert request.allowed is not None
    if not request.models or request.models == models:
        return request.allowed
    allowed = dict(zip(request.models, request.allowed, strict=True))
    mapped = tuple(allowed.get(name, False) for name in models)
    return mapped if any(mapped) else (True,) * len(models)


class InferenceObserver(Protocol):
    def inference_done(self, cache_hits: int, encoded: int, forward_passes: int, seconds: float) -> None: ...

    def nonfinite_outputs_seen(self, fell_back: int, refused: int) -> None: ...


class NonFiniteOutput(Unavailable):
    """The serving policy (and the version before it) gave this prompt non-finite probabilities."""


class PolicyInference:
    """Scores batches of ``InferenceRequest`` with the registry's current policy."""

    def __init__(
        self,
        encoder: Encoder,
        registry: PolicyRegistry,
        placement: DevicePlacement,
        *,
        max_batch_tokens: int,
        cache: EmbeddingCache,
        observer: InferenceObserver | None = None,
    ) -> None:
        self._encoder = encoder
        self._registry = registry
        self._placement = placement
        self._max_batch_tokens = max_batch_tokens
        self._cache = cache
        self._observer = observer
        self._prepared_source: LoadedPolicy | None = None
        self._prepared_network: Any = None
        # The version that served before the current one: rows the current one gets wrong fall back to it.
        self._serving: LoadedPolicy | None = None
        self._previous: LoadedPolicy | None = None
        self._previous_network: Any = None

    @property
    def encoder(self) -> Encoder:
        return self._encoder

    def _network_for(self, policy: LoadedPolicy) -> Any:
        """The policy's network on the serving device/dtype; the registry's CPU copy stays untouched."""
        if policy is not self._prepared_source:
            network = policy.network
            if self._placement.device != "cpu" or self._placement.half_precision:
                network = copy.deepcopy(network).to(self._placement.device, self._placement.torch_dtype())
            self._prepared_source, self._prepared_network = policy, network
        return self._prepared_network

    def embed(self, prompts: Sequence[str]) -> tuple[np.ndarray, list[bool], int]:
        """[N, dim] embeddings, per-prompt cache hit flags, and the number of encoder forward passes."""
        embeddings: list[np.ndarray | None] = [None] * len(prompts)
        hits = [False] * len(prompts)
        keys = [prompt_key(p) for p in prompts] if self._cache.enabled else []
        # Distinct prompts that missed the cache -> positions that need them (duplicates encode once).
        misses: dict[str, list[int]] = {}
        for index, prompt in enumerate(prompts):
            cached = self._cache.get(keys[index]) if keys else None
            if cached is not None:
                embeddings[index] = cached
                hits[index] = True
            else:
                misses.setdefault(prompt, []).append(index)
        passes = 0
        if misses:
            texts = list(misses)
            token_ids = self._encoder.token_ids(texts)
            lengths = [len(ids) + SPECIAL_TOKENS for ids in token_ids]
            for group in plan_length_groups(lengths, self._max_batch_tokens):
                encoded = self._encoder.encode_token_ids([token_ids[i] for i in group])
                passes += 1
                for row, text_index in enumerate(group):
                    vector = encoded[row]
                    positions = misses[texts[text_index]]
                    if keys:
                        self._cache.put(keys[positions[0]], vector)
                    for position in positions:
                        embeddings[position] = vector
        return np.stack(embeddings).astype(np.float32, copy=False), hits, passes  # type: ignore[arg-type]

    def run_batch(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult]:
        """One result per request, in order, all from one policy version."""
        started_s = time.perf_counter()
        active = self._registry.current()  # read once: the whole batch uses this version
        network = self._network_for(active)
        embeddings, hits, passes = self.embed([r.prompt for r in requests])
        models = active.manifest.models
        allowed = None
        if any(r.allowed is not None for r in requests):
            mask = np.ones((len(requests), len(models)), dtype=bool)
            for row, request in enumerate(requests):
                if request.allowed is not None:
                    mask[row] = _mask_for(models, request)
            allowed = torch.from_numpy(mask).to(self._placement.device)
        if active is not self._serving:
            if self._serving is not None:
                self._previous = self._serving
                self._previous_network = self._network_for_copy(self._serving)
            self._serving = active
        probabilities = self._probabilities(network, embeddings, requests, allowed)
        versions = [active.version] * len(requests)
        results: list[InferenceResult | NonFiniteOutput] = []
        bad = [row for row in range(len(requests)) if not np.isfinite(probabilities[row]).all()]
        refused: set[int] = set()
        if bad:
            refused = self._fall_back(bad, probabilities, versions, embeddings, requests, allowed, active)
        for row in range(len(requests)):
            if row in refused:
                results.append(
                    NonFiniteOutput(
                        f"policy v{active.version} produced non-finite probabilities for this prompt and no "
                        "earlier version could answer it"
                    )
                )
            else:
                answered = self._previous if versions[row] != active.version and self._previous else active
                results.append(
                    InferenceResult(
                        probabilities[row],
                        embeddings[row],
                        versions[row],
                        hits[row],
                        answered.manifest.models,
                        answered.manifest.retired_models(),
                    )
                )
        if self._observer is not None:
            hit_count = sum(hits)
            self._observer.inference_done(
                hit_count, len(requests) - hit_count, passes, time.perf_counter() - started_s
            )
        return results  # type: ignore[return-value]  # exception instances fail only their caller

    def _network_for_copy(self, policy: LoadedPolicy) -> Any:
        if self._placement.device != "cpu" or self._placement.half_precision:
            return copy.deepcopy(policy.network).to(self._placement.device, self._placement.torch_dtype())
        return policy.network

    def _probabilities(
        self,
        network: Any,
        embeddings: np.ndarray,
        requests: Sequence[InferenceRequest],
        allowed: torch.Tensor | None,
    ) -> np.ndarray:
        dtype = self._placement.torch_dtype()
        with torch.inference_mode():
            inputs = torch.from_numpy(embeddings).to(self._placement.device, dtype)
            weights = torch.tensor([r.quality_weight for r in requests], dtype=dtype, device=inputs.device)
            return network.probabilities(inputs, weights, allowed).cpu().numpy().astype(np.float64)

    def _fall_back(
        self,
        bad: list[int],
        probabilities: np.ndarray,
        versions: list[int],
        embeddings: np.ndarray,
        requests: Sequence[InferenceRequest],
        allowed: torch.Tensor | None,
        active: LoadedPolicy,
    ) -> set[int]:
        """Re-score the ``bad`` rows with the previous version (in place); returns the rows still bad.
        A non-finite output is never served: those rows fail with ``NonFiniteOutput`` (UNAVAILABLE)."""
        still_bad = set(bad)
        previous = self._previous
        if previous is not None and previous.manifest.models != active.manifest.models:
            previous = None  # another model list (a pool change): its probabilities would not line up
        if previous is not None:
            rows = torch.tensor(bad, dtype=torch.long)
            subset_allowed = None if allowed is None else allowed[rows.to(allowed.device)]
            redo = self._probabilities(
                self._previous_network, embeddings[bad], [requests[row] for row in bad], subset_allowed
            )
            for position, row in enumerate(bad):
                if np.isfinite(redo[position]).all():
                    probabilities[row] = redo[position]
                    versions[row] = previous.version
                    still_bad.discard(row)
        log.error(
            "policy_output_nonfinite",
            version=active.version,
            prompts=len(bad),
            fell_back_to=previous.version if previous is not None else None,
            refused=len(still_bad),
        )
        if self._observer is not None:
            self._observer.nonfinite_outputs_seen(len(bad) - len(still_bad), len(still_bad))
        return still_bad
