"""RoutingService: validate a RouteCommand, apply defaults and masks, batch inference, choose a model.

Owns request semantics (DESIGN §3): prompt limits, preference range, allowed_models, disabled models,
exploration defaults, decision ids. Knows nothing about gRPC (rpc/ converts) or about how inference is
batched (it submits to the micro-batcher). ``route`` is awaitable and reusable by Complete; ``restrict_to``
lets a caller (Complete) further limit the choice to models it can actually call.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Collection

import numpy as np

from barp_sidecar.batching.batcher import MicroBatcher
from barp_sidecar.domain import Decision, ExplorationMode, RouteCommand
from barp_sidecar.errors import InvalidArgument
from barp_sidecar.policy.inference import InferenceRequest, InferenceResult
from barp_sidecar.policy.mask import allowed_mask, models_in
from barp_sidecar.providers.failures import NoConfiguredModel
from barp_sidecar.routing.exploration import choose_arm
from barp_sidecar.settings import RoutingSettings

MAX_REQUEST_ID_CHARS = 128


class DecisionIds:
    """Unique decision ids: 64 random bits per process + a 64-bit counter, as 32 hex characters.

    Unique within a process by construction and across processes with overwhelming probability; costs
    no system call per decision (``uuid4`` reads the OS random source every time).
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFFFFFF:016x}"


class RoutingService:
    """Turns a RouteCommand into a Decision. One instance per server; safe for concurrent ``route``."""

    def __init__(
        self,
        *,
        arms: tuple[str, ...],
        encoder_id: str,
        batcher: MicroBatcher[InferenceRequest, InferenceResult],
        settings: RoutingSettings,
        max_prompt_bytes: int,
        rng: np.random.Generator,
        on_decision: Callable[[Decision], None] | None = None,
    ) -> None:
        unknown = sorted(set(settings.disabled_models) - set(arms))
        if unknown:
            raise ValueError(f"disabled models {unknown} are not arms of the policy {list(arms)}")
        self._arms = arms
        self._encoder_id = encoder_id
        self._batcher = batcher
        # Defaults for fields a request leaves unset (routing.*), and the prompt size limit (server.*).
        self._settings = settings
        self._disabled = settings.disabled_model_names()
        self._max_prompt_bytes = max_prompt_bytes
        self._rng = rng
        # Called with every decision (the learning loop keeps it pending until ReportOutcome or expiry).
        self._on_decision = on_decision
        self._ids = DecisionIds()

    @property
    def arms(self) -> tuple[str, ...]:
        return self._arms

    def _check_prompt(self, prompt: str) -> None:
        if not prompt:
            raise InvalidArgument("prompt", "must not be empty")
        limit = self._max_prompt_bytes
        # A str of n code points is at most 4n UTF-8 bytes: only measure when it might exceed the limit.
        if len(prompt) * 4 > limit:
            size = len(prompt.encode("utf-8", "surrogatepass"))
            if size > limit:
                raise InvalidArgument(
                    "prompt", f"is {size} bytes; the limit is {limit} (server.max_prompt_bytes)"
                )

    def _quality_weight(self, value: float | None) -> float:
        if value is None:
            return self._settings.default_quality_weight
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise InvalidArgument("preference.quality_weight", f"must be a number in [0, 1], not {value!r}")
        return float(value)

    def _mask(self, allowed_models: tuple[str, ...], restrict_to: Collection[str] | None) -> np.ndarray:
        mask = allowed_mask(self._arms, allowed_models, self._disabled)
        if restrict_to is None:
            return mask
        callable_mask = mask & np.array([name in restrict_to for name in self._arms], dtype=bool)
        if not callable_mask.any():
            raise NoConfiguredModel(list(models_in(self._arms, mask)))
        return callable_mask

    def prepare(
        self, command: RouteCommand, restrict_to: Collection[str] | None = None
    ) -> tuple[InferenceRequest, np.ndarray, ExplorationMode]:
        """Validate and resolve defaults; raises InvalidArgument / FailedPrecondition naming the field.

        The mask is computed here once (``policy.mask.allowed_mask``, then ``restrict_to``: models the caller
        can actually use, NoConfiguredModel when none of the allowed ones is); the Decision carries it."""
        self._check_prompt(command.prompt)
        weight = self._quality_weight(command.quality_weight)
        if len(command.request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidArgument("request_id", f"must be at most {MAX_REQUEST_ID_CHARS} characters")
        mask = self._mask(command.allowed_models, restrict_to)
        mode = command.exploration or self._settings.default_exploration
        allowed = None if mask.all() else tuple(bool(flag) for flag in mask)
        return InferenceRequest(command.prompt, weight, allowed), mask, mode

    async def route(self, command: RouteCommand, restrict_to: Collection[str] | None = None) -> Decision:
        """Decide for one prompt. Raises a BarpError subclass for every caller-visible failure."""
        request, mask, mode = self.prepare(command, restrict_to)
        result = await self._batcher.submit(request, command.deadline_monotonic_s)
        index, propensity = choose_arm(result.probabilities, mask, mode, self._settings.epsilon, self._rng)
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
