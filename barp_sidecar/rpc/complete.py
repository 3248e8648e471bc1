"""Router.Complete over gRPC: protobuf <-> CompletionService events, error mapping, access log.

Owns only transport concerns: converting the request, assembling chunks (the first carries the decision
and the first text; the last carries usage, cost, finish reason and provider latency; a short answer that
arrives at once is one chunk that is both), mapping errors
through the one status table, and the access event. Cancelling the call (client cancel or deadline)
cancels the service's generator, which closes the upstream HTTP response.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import grpc
import structlog

from barp_sidecar.errors import BarpError
from barp_sidecar.gen.barp.v1 import router_pb2
from barp_sidecar.metrics import SidecarMetrics
from barp_sidecar.providers.chat import ChatMessage, ChatRequest, GenerationParameters
from barp_sidecar.providers.forwarder import AnswerStarted, Completed, TextDelta
from barp_sidecar.routing.completion import CompleteCommand, CompletionService
from barp_sidecar.rpc import convert
from barp_sidecar.rpc.status import status_for

log = structlog.get_logger("barp_sidecar.access")


def chat_request(request: router_pb2.CompleteRequest) -> ChatRequest:
    p = request.parameters
    return ChatRequest(
        messages=tuple(ChatMessage(m.role, m.content) for m in request.messages),
        parameters=GenerationParameters(
            max_tokens=p.max_tokens,
            temperature=p.temperature if p.HasField("temperature") else None,
            top_p=p.top_p if p.HasField("top_p") else None,
            stop=tuple(p.stop),
            seed=p.seed if p.HasField("seed") else None,
        ),
    )


def complete_command(
    request: router_pb2.CompleteRequest, deadline_monotonic_s: float | None
) -> CompleteCommand:
    return CompleteCommand(
        chat=chat_request(request),
        quality_weight=request.preference.quality_weight if request.HasField("preference") else None,
        allowed_models=tuple(request.allowed_models),
        exploration=convert.exploration_from_pb(request.exploration),
        request_id=request.request_id,
        deadline_monotonic_s=deadline_monotonic_s,
    )


def _first_chunk(started: AnswerStarted, delta: str) -> router_pb2.CompleteChunk:
    decision = convert.route_response(started.decision)
    decision.model = started.model
    return router_pb2.CompleteChunk(decision=decision, delta=delta, fallback_from=list(started.fallback_from))


def _last_chunk(done: Completed, delta: str = "") -> router_pb2.CompleteChunk:
    return router_pb2.CompleteChunk(
        delta=delta,
        usage=router_pb2.Usage(
            input_tokens=done.usage.input_tokens,
            output_tokens=done.usage.output_tokens,
            cost_usd=done.cost_usd,
            estimated=done.usage.estimated,
        ),
        finish_reason=done.finish_reason,
        fallback_from=list(done.fallback_from),
        provider_latency_ms=done.provider_latency_ms,
    )


async def complete_stream(
    service: CompletionService,
    metrics: SidecarMetrics,
    request: router_pb2.CompleteRequest,
    context: grpc.aio.ServicerContext,
    *,
    log_prompts: bool,
) -> AsyncIterator[router_pb2.CompleteChunk]:
    started_s = time.monotonic()
    request_id = request.request_id or None
    code = grpc.StatusCode.CANCELLED
    message = ""
    model: str | None = None
    chosen: str | None = None
    decision_id: str | None = None
    fallback_from: tuple[str, ...] = ()
    chunks = 0
    try:
        remaining_s = context.time_remaining()
        deadline_s = None if remaining_s is None else started_s + remaining_s
        # The first chunk carries the decision with the first text; text that ended the answer is held
        # for the usage that follows at once, so a short answer is one message instead of two or three.
        pending: AnswerStarted | None = None
        held = ""
        events = service.complete(complete_command(request, deadline_s))
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, AnswerStarted):
                    pending = event
                    model, chosen, fallback_from = event.model, event.decision.model, event.fallback_from
                    decision_id = event.decision.decision_id
                elif isinstance(event, TextDelta):
                    if event.final:
                        held += event.text
                        continue
                    chunks += 1
                    if pending is not None:
                        yield _first_chunk(pending, event.text)
                        pending = None
                    else:
                        yield router_pb2.CompleteChunk(delta=event.text)
                elif isinstance(event, Completed):
                    chunk = _last_chunk(event, held)
                    if pending is not None:
                        chunk.decision.CopyFrom(_first_chunk(pending, "").decision)
                        pending = None
                    chunks += 1
                    yield chunk
        code = grpc.StatusCode.OK
    except BarpError as error:
        code, message = status_for(error), str(error)
    except Exception as error:  # a bug: never UNKNOWN, never a silent hang
        log.exception("complete_internal_error", request_id=request_id)
        code, message = grpc.StatusCode.INTERNAL, f"internal error ({type(error).__name__})"
    finally:
        latency_s = time.monotonic() - started_s
        metrics.rpc_done("Complete", code.name, latency_s, chosen)
        fields = {"messages": [m.content for m in request.messages]} if log_prompts else {}
        log.info(
            "rpc",
            method="Complete",
            request_id=request_id,
            decision_id=decision_id,
            code=code.name,
            model=model,
            routed_model=chosen,
            fallback_from=list(fallback_from) or None,
            chunks=chunks,
            latency_ms=round(latency_s * 1000, 3),
            error=message or None,
            **fields,
        )
    if code != grpc.StatusCode.OK:
        await context.abort(code, message)


class CompleteServicerMixin:
    """``Router.Complete`` for the Router servicer, which provides these three attributes."""

    _completion: CompletionService | None
    _metrics: SidecarMetrics
    _log_prompts: bool

    async def Complete(  # the generated base class names it
        self, request: router_pb2.CompleteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[router_pb2.CompleteChunk]:
        if self._completion is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Complete is not enabled in this sidecar")
        assert self._completion is not None
        async for chunk in complete_stream(
            self._completion, self._metrics, request, context, log_prompts=self._log_prompts
        ):
            yield chunk
