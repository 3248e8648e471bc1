"""CompletionService: validate a chat request, route its text, forward it, stream the answer (Complete).

Owns Complete's request semantics: which text is routed (``providers.routing_text``), that routing is
restricted to allowed models with an enabled provider, and the order of events a transport streams:
``AnswerStarted`` (decision + answering model + fallback_from), (``TextDelta`` | ``ToolCallsDelta``)*,
``Completed``. Knows nothing about gRPC (rpc/ converts), the OpenAI-compatible HTTP API (http/ converts)
or provider HTTP (providers/ forwards).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from barp_sidecar.domain import ExplorationMode, RouteCommand
from barp_sidecar.providers.chat import ChatRequest, routing_text, validate_chat_request
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
    # Absolute deadline on the ``time.monotonic()`` clock; ``None`` = no deadline.
    deadline_monotonic_s: float | None = None


CompletionEvent = AnswerStarted | TextDelta | ToolCallsDelta | Completed


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

    def set_callable_models(self, models: frozenset[str]) -> None:
        """Models with an enabled provider after a catalog reload (new providers were added)."""
        self._callable = models

    async def complete(self, command: CompleteCommand) -> AsyncGenerator[CompletionEvent, None]:
        """Route and forward one conversation; every caller-visible failure is a BarpError subclass."""
        validate_chat_request(command.chat)
        route = RouteCommand(
            prompt=routing_text(command.chat.messages, self._mode, self._max_bytes),
            quality_weight=command.quality_weight,
            allowed_models=command.allowed_models,
            exploration=command.exploration,
            request_id=command.request_id,
            deadline_monotonic_s=command.deadline_monotonic_s,
        )
        # Raises the field errors of Route first; NoConfiguredModel when no allowed model is callable.
        decision = await self._routing.route(route, restrict_to=self._callable)
        forwarded = self._forwarder.forward(
            decision=decision, request=command.chat, deadline_s=command.deadline_monotonic_s
        )
        # Closed here, in the caller's task, when the caller stops early (it has its answer, or went away):
        # left to the garbage collector, the upstream response and the provider-call span would be closed
        # later, from another task.
        async with contextlib.aclosing(forwarded) as events:
            async for event in events:
                yield event
