"""RoutingService: validate a RouteCommand, apply defaults and masks, batch inference, choose a model.

Owns request semantics (DESIGN §3): prompt limits, preference range, allowed_models, disabled models,
exploration defaults, decision ids. Knows nothing about gRPC (rpc/ converts) or about how inference is
batched (it submits to the micro-batcher). ``route`` is awaitable and reusable by Complete; ``restrict_to``
lets a caller (Complete) further limit the choice to models it can actually call.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from barp_sidecar.batching.batcher import MicroBatcher
from barp_sidecar.bounded_text import preview_items
from barp_sidecar.domain import Decision, ExplorationMode, RouteCommand
from barp_sidecar.errors import InvalidArgument, NoAllowedModel
from barp_sidecar.policy.inference import InferenceRequest, InferenceResult
from barp_sidecar.routing.exploration import choose_arm

MAX_REQUEST_ID_CHARS = 128


@dataclass(frozen=True)
class RoutingDefaults:
    """What a request gets when it leaves a field unset, and service-wide limits."""

    quality_weight: float = 0.5
    exploration: ExplorationMode = ExplorationMode.GREEDY
    epsilon: float = 0.05
    max_prompt_bytes: int = 1 << 20
    # Models this sidecar never chooses (masked for every request), e.g. no contract with that provider.
    disabled_models: frozenset[str] = frozenset()


class DecisionIds:
    """Unguessable decision ids: 128 bits from the OS random source per id, as 32 hex characters.

    An id is the only credential ReportOutcome asks for, so it must not be predictable from another id
    (a counter would be). Random bytes are read in blocks of ``ids_per_read`` ids: one system call per
    block instead of one per decision.
    """

    ID_BYTES = 16

    def __init__(self, ids_per_read: int = 256) -> None:
        self._ids_per_read = ids_per_read
        self._block = b""
        self._offset = 0

    def next(self) -> str:
        if self._offset >= len(self._block):
            self._block = os.urandom(self.ID_BYTES * self._ids_per_read)
            self._offset = 0
        start = self._offset
        self._offset += self.ID_BYTES
        return self._block[start : self._offset].hex()


class RoutingService:
    """Turns a RouteCommand into a Decision. One instance per server; safe for concurrent ``route``."""

    def __init__(
        self,
        *,
        arms: tuple[str, ...],
        encoder_id: str,
        batcher: MicroBatcher[InferenceRequest, InferenceResult],
        defaults: RoutingDefaults,
        rng: np.random.Generator,
        on_decision: Callable[[Decision], None] | None = None,
    ) -> None:
        unknown = sorted(set(defaults.disabled_models) - set(arms))
        if unknown:
            raise ValueError(f"disabled models {unknown} are not arms of the policy {list(arms)}")
        self._arms = arms
        self._arm_index = {name: index for index, name in enumerate(arms)}
        self._encoder_id = encoder_id
        self._batcher = batcher
        self._defaults = defaults
        self._rng = rng
        # Called with every decision (the learning loop keeps it pending until ReportOutcome or expiry).
        self._on_decision = on_decision
        self._enabled = np.array([name not in defaults.disabled_models for name in arms], dtype=bool)
        self._ids = DecisionIds()

    @property
    def arms(self) -> tuple[str, ...]:
        return self._arms

    def _check_prompt(self, prompt: str) -> None:
        if not prompt:
            raise InvalidArgument("prompt", "must not be empty")
        limit = self._defaults.max_prompt_bytes
        # A str of n code points is at most 4n UTF-8 bytes: only measure when it might exceed the limit.
        if len(prompt) * 4 > limit:
            size = len(prompt.encode("utf-8", "surrogatepass"))
            if size > limit:
                raise InvalidArgument(
                    "prompt", f"is {size} bytes; the limit is {limit} (server.max_prompt_bytes)"
                )

    def _quality_weight(self, value: float | None) -> float:
        if value is None:
            return self._defaults.quality_weight
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise InvalidArgument("preference.quality_weight", f"must be a number in [0, 1], not {value!r}")
        return float(value)

    def _mask(self, allowed_models: tuple[str, ...], restrict_to: Collection[str] | None) -> np.ndarray:
        if allowed_models:
            seen: set[str] = set()
            for name in allowed_models:
                if name in seen:
                    raise InvalidArgument("allowed_models", f"duplicate model {preview_items([name])[1:-1]}")
                seen.add(name)
            unknown = [name for name in allowed_models if name not in self._arm_index]
            if unknown:
                raise InvalidArgument(
                    "allowed_models",
                    f"{len(unknown)} unknown model(s) {preview_items(unknown)}; "
                    f"known models: {preview_items(self._arms, max_items=64)}",
                )
            mask = np.zeros(len(self._arms), dtype=bool)
            mask[[self._arm_index[name] for name in allowed_models]] = True
            mask &= self._enabled
        else:
            mask = self._enabled.copy()
        if restrict_to is not None:
            mask &= np.array([name in restrict_to for name in self._arms], dtype=bool)
        if not mask.any():
            requested = preview_items(allowed_models) if allowed_models else "all models"
            raise NoAllowedModel(
                f"no allowed model is available: allowed_models={requested}, "
                f"disabled (routing.disabled_models)={sorted(self._defaults.disabled_models)}"
                + ("" if restrict_to is None else f", callable={sorted(restrict_to)}")
            )
        return mask

    def prepare(
        self, command: RouteCommand, restrict_to: Collection[str] | None = None
    ) -> tuple[InferenceRequest, np.ndarray, ExplorationMode]:
        """Validate and resolve defaults; raises InvalidArgument / FailedPrecondition naming the field."""
        self._check_prompt(command.prompt)
        weight = self._quality_weight(command.quality_weight)
        if len(command.request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidArgument("request_id", f"must be at most {MAX_REQUEST_ID_CHARS} characters")
        mask = self._mask(command.allowed_models, restrict_to)
        mode = command.exploration or self._defaults.exploration
        allowed = None if mask.all() else tuple(bool(flag) for flag in mask)
        return InferenceRequest(command.prompt, weight, allowed), mask, mode

    async def route(self, command: RouteCommand, restrict_to: Collection[str] | None = None) -> Decision:
        """Decide for one prompt. Raises a BarpError subclass for every caller-visible failure."""
        request, mask, mode = self.prepare(command, restrict_to)
        result = await self._batcher.submit(request, command.deadline_monotonic_s)
        index, propensity = choose_arm(result.probabilities, mask, mode, self._defaults.epsilon, self._rng)
        decision = Decision(
            decision_id=self._ids.next(),
            model=self._arms[index],
            propensity=propensity,
            arms=self._arms,
            probabilities=tuple(result.probabilities.tolist()),
            policy_version=result.policy_version,
            encoder=self._encoder_id,
            exploration=mode,
            quality_weight=request.quality_weight,
            embedding=result.embedding,
            request_id=command.request_id,
            allowed=tuple(bool(flag) for flag in mask),
        )
        if self._on_decision is not None:
            self._on_decision(decision)
        return decision
