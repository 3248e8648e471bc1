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

import numpy as np
from opentelemetry.trace import Span, Tracer

from barp_sidecar.batching.batcher import MicroBatcher
from barp_sidecar.domain import Decision, ExplorationMode, RouteCommand
from barp_sidecar.errors import InvalidArgument, NoAllowedModel
from barp_sidecar.policy.inference import InferenceRequest, InferenceResult
from barp_sidecar.policy.mask import allowed_mask, models_in
from barp_sidecar.providers.failures import NoConfiguredModel
from barp_sidecar.routing.exploration import choose_model
from barp_sidecar.settings import RoutingSettings

MAX_REQUEST_ID_CHARS = 128


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
        models: tuple[str, ...],
        encoder_id: str,
        batcher: MicroBatcher[InferenceRequest, InferenceResult],
        settings: RoutingSettings,
        max_prompt_bytes: int,
        rng: np.random.Generator,
        on_decision: Callable[[Decision], None] | None = None,
        tracer: Tracer | None = None,
        serving_models: Callable[[], tuple[str, ...]] | None = None,
    ) -> None:
        """``models``: the policy's models at start-up (``routing.disabled_models`` must name some of them);
        ``serving_models``: the serving policy's models now (None: always ``models``), which a model-pool
        change replaces between two requests."""
        unknown = sorted(set(settings.disabled_models) - set(models))
        if unknown:
            raise ValueError(f"disabled models {unknown} are not models of the policy {list(models)}")
        self._models = models
        self._serving_models = serving_models or (lambda: self._models)
        self._encoder_id = encoder_id
        self._batcher = batcher
        # Defaults for fields a request leaves unset (routing.*), and the prompt size limit (server.*).
        self._settings = settings
        self._disabled = settings.disabled_model_names()
        self._max_prompt_bytes = max_prompt_bytes
        self._rng = rng
        # Called with every decision (the learning loop keeps it pending until ReportOutcome or expiry).
        self._on_decision = on_decision
        # None = tracing off: no span, no timing callback (the hot path stays as it was).
        self._tracer = tracer
        self._ids = DecisionIds()

    @property
    def models(self) -> tuple[str, ...]:
        return self._serving_models()

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

    def _mask(
        self, models: tuple[str, ...], allowed_models: tuple[str, ...], restrict_to: Collection[str] | None
    ) -> np.ndarray:
        mask = allowed_mask(models, allowed_models, self._disabled)
        if restrict_to is None:
            return mask
        callable_mask = mask & np.array([name in restrict_to for name in models], dtype=bool)
        if not callable_mask.any():
            raise NoConfiguredModel(list(models_in(models, mask)))
        return callable_mask

    def _answer_mask(
        self,
        mask: np.ndarray,
        request: InferenceRequest,
        result: InferenceResult,
        command: RouteCommand,
        restrict_to: Collection[str] | None,
    ) -> np.ndarray:
        """The mask in the order of the models that answered: recomputed when a pool change swapped the
        model list after ``prepare``; minus the answering version's retired models (no exploration mode may
        pick them) unless the request allowed nothing else."""
        if result.models and result.models != request.models:
            # Names the request allowed that the answering version dropped are no longer choices.
            kept = tuple(name for name in command.allowed_models if name in result.models)
            if command.allowed_models and not kept:
                raise NoAllowedModel(
                    f"the allowed models {list(command.allowed_models)} left the model pool "
                    f"(now {list(result.models)})"
                )
            mask = self._mask(result.models, kept, restrict_to)
        if result.retired:
            kept = mask & np.array([name not in result.retired for name in result.models], dtype=bool)
            if kept.any():
                return kept
        return mask

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
        models = self._serving_models()
        mask = self._mask(models, command.allowed_models, restrict_to)
        mode = command.exploration or self._settings.default_exploration
        allowed = None if mask.all() else tuple(bool(flag) for flag in mask)
        return InferenceRequest(command.prompt, weight, allowed, models), mask, mode

    async def route(self, command: RouteCommand, restrict_to: Collection[str] | None = None) -> Decision:
        """Decide for one prompt. Raises a BarpError subclass for every caller-visible failure."""
        if self._tracer is None:
            return await self._decide(command, restrict_to, None)
        with self._tracer.start_as_current_span("barp.route", record_exception=True) as span:
            decision = await self._decide(command, restrict_to, span)
            span.set_attributes(
                {
                    "barp.decision_id": decision.decision_id,
                    "barp.model": decision.model,
                    "barp.propensity": decision.propensity,
                    "barp.policy_version": decision.policy_version,
                    "barp.quality_weight": decision.quality_weight,
                }
            )
            return decision

    async def _decide(
        self, command: RouteCommand, restrict_to: Collection[str] | None, span: Span | None
    ) -> Decision:
        request, mask, mode = self.prepare(command, restrict_to)

        def timing(queue_wait_s: float, batch_size: int, run_s: float) -> None:
            assert span is not None
            span.set_attributes(
                {
                    "barp.queue_wait_ms": queue_wait_s * 1000.0,
                    "barp.batch_size": batch_size,
                    "barp.inference_ms": run_s * 1000.0,
                }
            )

        result = await self._batcher.submit(
            request, command.deadline_monotonic_s, None if span is None else timing
        )
        mask = self._answer_mask(mask, request, result, command, restrict_to)
        models = result.models or request.models
        index, propensity = choose_model(result.probabilities, mask, mode, self._settings.epsilon, self._rng)
        decision = Decision(
            decision_id=self._ids.next(),
            model=models[index],
            propensity=propensity,
            models=models,
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
