"""Anthropic Messages API (``POST {base_url}/messages`` with ``stream: true``).

Builds the request (system messages go to the top-level ``system`` field; ``max_tokens`` is required, so
the catalog's ``default_max_tokens`` fills in for 0) and decodes the event stream: ``message_start``
(input tokens), ``content_block_start``/``content_block_delta`` (text, ``tool_use`` blocks and their
``input_json_delta`` pieces), ``message_delta`` (stop reason, output tokens), ``message_stop``, ``ping``,
``error``. Stop reasons are mapped to OpenAI's vocabulary ("stop", "length", "tool_calls").

Function calling maps to Anthropic's tools: ``tools`` -> ``tools[].input_schema``, ``tool_choice``
auto/required/none/a name -> ``{"type": "auto"|"any"|"none"|"tool"}``, an assistant's ``tool_calls`` ->
``tool_use`` blocks, ``tool`` messages -> ``tool_result`` blocks in a user turn. ``response_format`` has no
Anthropic equivalent: asking for JSON output from an Anthropic model is ``InvalidArgument``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from barp_sidecar.errors import InvalidArgument
from barp_sidecar.providers.adapter import (
    HttpRequest,
    StreamProtocolError,
    UpstreamStreamError,
    json_object,
)
from barp_sidecar.providers.chat import (
    ChatMessage,
    ChatRequest,
    GenerationParameters,
    StreamEvent,
    ToolCallDelta,
)
from barp_sidecar.providers.failures import describe_upstream_error
from barp_sidecar.providers.sse import SSEError, SSEParser

if TYPE_CHECKING:  # the catalog imports the adapters (api_styles registry) at run time
    from barp_sidecar.providers.catalog import ProviderEntry

ANTHROPIC_VERSION = "2023-06-01"
_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}
_TOOL_CHOICES = {"auto": "auto", "required": "any", "none": "none"}


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _tool_input(arguments: str, field: str) -> Any:
    try:
        return json.loads(arguments) if arguments else {}
    except json.JSONDecodeError as exc:
        raise InvalidArgument(field, f"is not JSON, which the Anthropic API needs ({exc.msg})") from None


def _messages(messages: tuple[ChatMessage, ...]) -> list[dict[str, Any]]:
    """Non-system turns as Anthropic content; consecutive tool results share one user turn."""
    converted: list[dict[str, Any]] = []
    for index, m in enumerate(messages):
        if m.role == "system":
            continue
        if m.role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}
            last = converted[-1] if converted else None
            if last is not None and last["role"] == "user" and isinstance(last["content"], list):
                last["content"].append(block)
            else:
                converted.append({"role": "user", "content": [block]})
        elif m.tool_calls:
            blocks: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
            for position, call in enumerate(m.tool_calls):
                field = f"messages[{index}].tool_calls[{position}].function.arguments"
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": _tool_input(call.arguments, field),
                    }
                )
            converted.append({"role": m.role, "content": blocks})
        else:
            converted.append({"role": m.role, "content": m.content})
    return converted


def _tool_fields(p: GenerationParameters) -> dict[str, Any]:
    if p.response_format is not None and p.response_format.get("type", "text") != "text":
        raise InvalidArgument(
            "response_format", "the Anthropic API of the routed model has no response_format (JSON mode)"
        )
    fields: dict[str, Any] = {}
    if p.tools:
        fields["tools"] = [
            {
                "name": t.name,
                **({"description": t.description} if t.description else {}),
                "input_schema": dict(t.parameters) or {"type": "object", "properties": {}},
            }
            for t in p.tools
        ]
    if p.tool_choice_name is not None:
        fields["tool_choice"] = {"type": "tool", "name": p.tool_choice_name}
    elif p.tool_choice is not None:
        fields["tool_choice"] = {"type": _TOOL_CHOICES[p.tool_choice]}
    return fields


class AnthropicStreamDecoder:
    def __init__(self) -> None:
        self._sse = SSEParser()
        self._stopped = False
        # Content block index -> OpenAI-style tool call index (0, 1, ... in order of appearance).
        self._tool_blocks: dict[int, int] = {}

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        try:
            sse_events = self._sse.feed(chunk)
        except SSEError as exc:
            raise StreamProtocolError(f"malformed event stream: {exc}") from exc
        events: list[StreamEvent] = []
        for sse in sse_events:
            payload = json_object(sse.data, f"event {sse.event!r}")
            kind = payload.get("type", sse.event)
            event = self._decode(kind, payload)
            if event is not None:
                events.append(event)
        return events

    def _decode(self, kind: str, payload: dict[str, Any]) -> StreamEvent | None:
        if kind == "error":
            raise UpstreamStreamError(describe_upstream_error(payload))
        if kind == "message_start":
            message = payload.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                return StreamEvent(input_tokens=_count(usage.get("input_tokens")))
            return None
        if kind == "content_block_start":
            block = payload.get("content_block")
            if isinstance(block, dict) and block.get("type") == "tool_use":
                index = len(self._tool_blocks)
                self._tool_blocks[payload.get("index", -1)] = index
                call = ToolCallDelta(index, id=str(block.get("id", "")), name=str(block.get("name", "")))
                return StreamEvent(tool_calls=(call,))
            return None
        if kind == "content_block_delta":
            delta = payload.get("delta")
            if not isinstance(delta, dict):
                raise StreamProtocolError("content_block_delta without a delta object")
            if delta.get("type") == "text_delta":
                text = delta.get("text")
                if not isinstance(text, str):
                    raise StreamProtocolError("text_delta without a text string")
                return StreamEvent(delta=text) if text else None
            if delta.get("type") == "input_json_delta":
                # Pieces of a tool_use block announced by content_block_start; others are not ours.
                tool_index = self._tool_blocks.get(payload.get("index", -1))
                partial = delta.get("partial_json")
                if tool_index is None or not isinstance(partial, str) or not partial:
                    return None
                return StreamEvent(tool_calls=(ToolCallDelta(tool_index, arguments=partial),))
            return None  # thinking deltas are not part of the answer
        if kind == "message_delta":
            delta = payload.get("delta")
            usage = payload.get("usage")
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            output = _count(usage.get("output_tokens")) if isinstance(usage, dict) else None
            finish = _STOP_REASONS.get(reason, reason) if isinstance(reason, str) else None
            return StreamEvent(finish_reason=finish, output_tokens=output)
        if kind == "message_stop":
            self._stopped = True
        return None  # ping, content_block_start/stop, unknown future events

    def finish(self) -> list[StreamEvent]:
        self._sse.close()
        if not self._stopped:
            raise StreamProtocolError("stream ended before message_stop")
        return []


class AnthropicAdapter:
    def build_request(self, entry: ProviderEntry, request: ChatRequest, api_key: str | None) -> HttpRequest:
        p = request.parameters
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        body: dict[str, Any] = {
            "model": entry.upstream_model,
            "messages": _messages(request.messages),
            "max_tokens": p.max_tokens if p.max_tokens > 0 else entry.default_max_tokens,
            "stream": True,
        }
        if system:
            body["system"] = system
        if p.temperature is not None:
            body["temperature"] = min(p.temperature, 1.0)  # Anthropic's range is [0, 1]
        if p.top_p is not None:
            body["top_p"] = p.top_p
        if p.stop:
            body["stop_sequences"] = list(p.stop)
        body.update(_tool_fields(p))
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if api_key is not None:
            headers["x-api-key"] = api_key
        return HttpRequest(f"{entry.base_url}/messages", headers, body)

    def stream_decoder(self) -> AnthropicStreamDecoder:
        return AnthropicStreamDecoder()

    def decode_body(self, body: bytes) -> list[StreamEvent]:
        payload = json_object(body, "response body")
        if payload.get("type") == "error" or "error" in payload:
            raise UpstreamStreamError(describe_upstream_error(payload))
        content = payload.get("content")
        if not isinstance(content, list):
            raise StreamProtocolError("response body lacks a content list")
        text = "".join(
            block.get("text", "")
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
        tool_blocks = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_use"]
        calls = tuple(
            ToolCallDelta(i, str(b.get("id", "")), str(b.get("name", "")), json.dumps(b.get("input", {})))
            for i, b in enumerate(tool_blocks)
        )
        reason = payload.get("stop_reason")
        raw_usage = payload.get("usage")
        usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
        return [
            StreamEvent(
                delta=text,
                finish_reason=_STOP_REASONS.get(reason, reason) if isinstance(reason, str) else "stop",
                input_tokens=_count(usage.get("input_tokens")),
                output_tokens=_count(usage.get("output_tokens")),
                tool_calls=calls,
            )
        ]
