"""CompletionService: validate a chat request, route its text, forward it, stream the answer (Complete).

Owns Complete's request semantics: which text is routed (``providers.routing_text``), that routing is
restricted to allowed models with an enabled provider, and the order of events a transport streams:
``CompletionStarted`` (decision + answering model + fallback_from), (``TextDelta`` | ``ToolCallsDelta``)*,
``Completed``. Knows nothing about gRPC (rpc/ converts), the OpenAI-compatible HTTP API (http/ converts)
or provider HTTP (providers/ forwards).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field

from barp_sidecar.domain import Decision, ExplorationMode, RouteCommand
from barp_sidecar.errors import FailedPrecondition
from barp_sidecar.providers.chat import ChatRequest, routing_text, validate_chat_request
from barp_sidecar.providers.failures import NoConfiguredModel
from barp_sidecar.providers.forwarder import AnswerStarted, Completed, Forwarder, TextDelta, ToolCallsDelta
from barp_sidecar.routing.service import RoutingService


@dataclass(frozen=True)
class CompleteCommand:
    """One Complete request as the caller stated it; ``None`` means "use the configured default"."""

    chat: ChatRequest
    quality_weight: float | None = None
    allowed_models: tuple[str, ...] = ()
    exploration: ExplorationMode | None = None
    request_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Absolute deadline on the ``time.monotonic()`` clock; ``None`` = no deadline.
    deadline_monotonic_s: float | None = None


@dataclass(frozen=True)
class CompletionStarted:
    """The first content arrived. ``model`` answers; ``decision.model`` is what routing chose."""

    decision: Decision
    model: str
    fallback_from: tuple[str, ...]


CompletionEvent = CompletionStarted | TextDelta | ToolCallsDelta | Completed


class CompletionService:
    def __init__(
        self,
        *,
        routing: RoutingService,
        forwarder: Forwarder,
        callable_models: frozenset[str],
        routing_text_mode: str,
        routing_text_max_bytes: int,
    ) -> None:
        self._routing = routing
        self._forwarder = forwarder
        self._callable = callable_models
        self._mode = routing_text_mode
        self._max_bytes = routing_text_max_bytes

    @property
    def callable_models(self) -> frozenset[str]:
        """Models with an enabled provider: what a caller may name (the HTTP API lists them)."""
        return self._callable

    async def complete(self, command: CompleteCommand) -> AsyncGenerator[CompletionEvent, None]:
        """Route and forward one conversation; every caller-visible failure is a BarpError subclass."""
        validate_chat_request(command.chat)
        route = RouteCommand(
            prompt=routing_text(command.chat.messages, self._mode, self._max_bytes),
            quality_weight=command.quality_weight,
            allowed_models=command.allowed_models,
            exploration=command.exploration,
            request_id=command.request_id,
            metadata=command.metadata,
            deadline_monotonic_s=command.deadline_monotonic_s,
        )
        try:
            # Field errors (unknown or duplicate models, bad preference) are raised first, as for Route.
            decision = await self._routing.route(route, restrict_to=self._callable)
        except FailedPrecondition:
            # Nothing allowed is callable: name the allowed models that lack a provider (prepare raises
            # its own FailedPrecondition when routing.disabled_models already masks every one).
            _, mask, _ = self._routing.prepare(route)
            raise NoConfiguredModel(
                [arm for arm, allowed in zip(self._routing.arms, mask, strict=True) if allowed]
            ) from None
        permitted = set(command.allowed_models) if command.allowed_models else None
        allowed = frozenset(a for a in self._callable if permitted is None or a in permitted)
        forwarded = self._forwarder.forward(
            decision_id=decision.decision_id,
            chosen=decision.model,
            probabilities=tuple(zip(decision.arms, decision.probabilities, strict=True)),
            allowed=allowed,
            request=command.chat,
            deadline_s=command.deadline_monotonic_s,
        )
        # Closed here, in the caller's task, when the caller stops early (it has its answer, or went away):
        # left to the garbage collector, the upstream response and the provider-call span would be closed
        # later, from another task.
        async with contextlib.aclosing(forwarded) as events:
            async for event in events:
                if isinstance(event, AnswerStarted):
                    yield CompletionStarted(decision, event.model, event.fallback_from)
                else:
                    yield event
