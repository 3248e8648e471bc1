"""OpenAI-shaped answers: the error table and body, ``chat.completion`` objects and stream chunks. Pure.

Owns the JSON the HTTP API sends: the one table from domain errors to HTTP status and OpenAI error
``type`` (the HTTP twin of ``rpc.status``), the non-streamed ``chat.completion`` assembled from
``CompletionService`` events, and the ``chat.completion.chunk`` server-sent events exactly as OpenAI sends
them (``data: {...}`` lines, the usage chunk when ``stream_options.include_usage`` asks, ``data: [DONE]``).
The router's own facts (decision id, routed model, propensity, cost) ride in a ``barp`` extension object.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from barp_sidecar import errors
from barp_sidecar.http.openai_request import ModelNotFound
from barp_sidecar.providers.chat import ToolCallDelta
from barp_sidecar.providers.forwarder import AnswerStarted, Completed

DONE_EVENT = b"data: [DONE]\n\n"

# (error class, HTTP status, OpenAI error type); the first match wins, anything else is a 500.
HTTP_STATUS_BY_ERROR: tuple[tuple[type[errors.BarpError], int, str], ...] = (
    (errors.InvalidArgument, 400, "invalid_request_error"),
    (errors.NotFound, 404, "invalid_request_error"),
    (errors.FailedPrecondition, 400, "invalid_request_error"),
    (errors.ResourceExhausted, 429, "rate_limit_error"),
    (errors.DeadlineExceeded, 504, "timeout_error"),
    (errors.Unavailable, 503, "service_unavailable_error"),
)
_CODE_BY_ERROR: tuple[tuple[type[errors.BarpError], str], ...] = (
    (errors.NotFound, "not_found"),
    (errors.FailedPrecondition, "failed_precondition"),
    (errors.ResourceExhausted, "resource_exhausted"),
    (errors.DeadlineExceeded, "deadline_exceeded"),
    (errors.Unavailable, "unavailable"),
)


@dataclass(frozen=True)
class HttpError:
    """One OpenAI-style error: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def event(self) -> bytes:
        """The error as a stream event (after the stream started, the HTTP status is already 200)."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"


def http_error(error: BaseException) -> HttpError:
    """The HTTP answer for ``error``; the field of an ``InvalidArgument`` becomes ``param``."""
    match = next(((s, k) for t, s, k in HTTP_STATUS_BY_ERROR if isinstance(error, t)), None)
    if match is None:
        return HttpError(500, f"internal error ({type(error).__name__})", "server_error")
    status, kind = match
    code = next((c for t, c in _CODE_BY_ERROR if isinstance(error, t)), None)
    if isinstance(error, errors.InvalidArgument):
        # Shared validation names GenerationParameters fields; OpenAI's are top-level.
        param = error.field.removeprefix("parameters.")
        detail = str(error).split(": ", 1)[1] if ": " in str(error) else str(error)
        return HttpError(status, f"{param}: {detail}", kind, param=param, code="invalid_value")
    if isinstance(error, ModelNotFound):
        return HttpError(status, str(error), kind, param="model", code="model_not_found")
    return HttpError(status, str(error), kind, code=code)


def _barp_extension(started: AnswerStarted) -> dict[str, Any]:
    d = started.decision
    return {
        "decision_id": d.decision_id,
        "routed_model": d.model,
        "propensity": d.propensity,
        "policy_version": d.policy_version,
        "quality_weight": d.quality_weight,
        "fallback_from": list(started.fallback_from),
    }


def _usage(done: Completed) -> dict[str, int]:
    u = done.usage
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
    }


def _cost(done: Completed) -> dict[str, Any]:
    return {"cost_usd": done.cost_usd, "usage_estimated": done.usage.estimated}


@dataclass
class ToolCallAssembler:
    """Joins streamed tool-call pieces by index into whole OpenAI ``tool_calls`` entries."""

    calls: dict[int, dict[str, Any]] = field(default_factory=dict)

    def add(self, pieces: Iterable[ToolCallDelta]) -> None:
        for piece in pieces:
            call = self.calls.setdefault(
                piece.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            )
            if piece.id:
                call["id"] = piece.id
            if piece.name:
                call["function"]["name"] = piece.name
            call["function"]["arguments"] += piece.arguments

    def result(self) -> list[dict[str, Any]]:
        return [self.calls[index] for index in sorted(self.calls)]


@dataclass
class CompletionAssembler:
    """Collects one call's events into a non-streamed ``chat.completion`` object."""

    completion_id: str
    created_s: int
    started: AnswerStarted
    text: list[str] = field(default_factory=list)
    tools: ToolCallAssembler = field(default_factory=ToolCallAssembler)

    def body(self, done: Completed) -> dict[str, Any]:
        calls = self.tools.result()
        text = "".join(self.text)
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
        message["refusal"] = None
        if calls:
            message["tool_calls"] = calls
        return {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": self.created_s,
            "model": done.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": done.finish_reason}
            ],
            "usage": _usage(done),
            "system_fingerprint": None,
            "barp": {**_barp_extension(self.started), **_cost(done)},
        }


class ChunkEncoder:
    """Encodes one call's events as OpenAI ``chat.completion.chunk`` server-sent events."""

    def __init__(self, completion_id: str, created_s: int, model: str, include_usage: bool) -> None:
        self._id = completion_id
        self._created = created_s
        self._model = model
        self._include_usage = include_usage
        self._announced: set[int] = set()

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self._include_usage:
            payload["usage"] = None
        payload.update(extra)
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    def _delta(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._event([choice], **extra)

    def first(self, started: AnswerStarted) -> bytes:
        """The role chunk, carrying the router's decision in the ``barp`` extension."""
        return self._delta(
            {"role": "assistant", "content": "", "refusal": None}, barp=_barp_extension(started)
        )

    def text(self, text: str) -> bytes:
        return self._delta({"content": text})

    def tool_calls(self, pieces: Iterable[ToolCallDelta]) -> bytes:
        calls = []
        for piece in pieces:
            call: dict[str, Any] = {"index": piece.index}
            function: dict[str, Any] = {"arguments": piece.arguments}
            if piece.index not in self._announced:
                # OpenAI sends id, type and name once, with the first piece of each call.
                self._announced.add(piece.index)
                call.update(id=piece.id or "", type="function")
                function["name"] = piece.name or ""
            call["function"] = function
            calls.append(call)
        return self._delta({"tool_calls": calls})

    def last(self, done: Completed) -> bytes:
        """The finish chunk (with the cost in ``barp``), the usage chunk when asked for, and ``[DONE]``."""
        events = self._delta({}, done.finish_reason, barp=_cost(done))
        if self._include_usage:
            events += self._event([], usage=_usage(done))
        return events + DONE_EVENT
