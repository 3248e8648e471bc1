"""OpenAI-compatible chat completions (``POST {base_url}/chat/completions`` with ``stream: true``).

Builds the request (parameters, tools, ``tool_choice`` and ``response_format`` passed through;
``stream_options.include_usage`` asks for the final usage chunk) and decodes the SSE stream:
``choices[0].delta.content`` and ``delta.tool_calls`` pieces, ``finish_reason``, the ``usage`` chunk,
``data: [DONE]``. A stream that ends before a finish reason or ``[DONE]`` is a protocol error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


def _usage_event(usage: Any) -> StreamEvent | None:
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    return StreamEvent(
        input_tokens=prompt if isinstance(prompt, int) and prompt >= 0 else None,
        output_tokens=completion if isinstance(completion, int) and completion >= 0 else None,
    )


def _tool_call_deltas(raw: Any, where: str) -> tuple[ToolCallDelta, ...]:
    """``delta.tool_calls`` (streamed pieces) or ``message.tool_calls`` (whole calls) as deltas."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise StreamProtocolError(f"{where}.tool_calls is not a list")
    calls = []
    for position, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise StreamProtocolError(f"{where}.tool_calls[{position}] lacks a function object")
        index = call.get("index", position)
        call_id, name, arguments = call.get("id"), function.get("name"), function.get("arguments") or ""
        if not isinstance(index, int) or not isinstance(arguments, str):
            raise StreamProtocolError(f"{where}.tool_calls[{position}] has a bad index or arguments")
        calls.append(
            ToolCallDelta(
                index=index,
                id=call_id if isinstance(call_id, str) else None,
                name=name if isinstance(name, str) else None,
                arguments=arguments,
            )
        )
    return tuple(calls)


def _message(m: ChatMessage) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": m.role,
        "content": m.content if m.content or not m.tool_calls else None,
    }
    if m.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        message["tool_call_id"] = m.tool_call_id
    return message


def _tool_fields(p: GenerationParameters) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if p.tools:
        fields["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    **({"description": t.description} if t.description else {}),
                    "parameters": dict(t.parameters),
                },
            }
            for t in p.tools
        ]
    if p.tool_choice_name is not None:
        fields["tool_choice"] = {"type": "function", "function": {"name": p.tool_choice_name}}
    elif p.tool_choice is not None:
        fields["tool_choice"] = p.tool_choice
    if p.response_format is not None:
        fields["response_format"] = dict(p.response_format)
    return fields


class OpenAIStreamDecoder:
    def __init__(self) -> None:
        self._sse = SSEParser()
        self._done = False
        self._finished = False

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        try:
            sse_events = self._sse.feed(chunk)
        except SSEError as exc:
            raise StreamProtocolError(f"malformed event stream: {exc}") from exc
        events: list[StreamEvent] = []
        for sse in sse_events:
            if self._done:
                raise StreamProtocolError("data after [DONE]")
            if sse.data.strip() == "[DONE]":
                self._done = True
                continue
            events.extend(self._decode(sse.data))
        return events

    def _decode(self, data: str) -> list[StreamEvent]:
        payload = json_object(data, "stream chunk")
        if "error" in payload:
            raise UpstreamStreamError(describe_upstream_error(payload))
        events: list[StreamEvent] = []
        choices = payload.get("choices")
        if choices is not None and not isinstance(choices, list):
            raise StreamProtocolError("stream chunk 'choices' is not a list")
        for choice in choices or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise StreamProtocolError("stream chunk 'choices[0].delta' is not an object")
            content = delta.get("content")
            if content is not None and not isinstance(content, str):
                raise StreamProtocolError("stream chunk 'choices[0].delta.content' is not a string")
            finish = choice.get("finish_reason")
            if finish is not None:
                self._finished = True
            calls = _tool_call_deltas(delta.get("tool_calls"), "stream chunk 'choices[0].delta'")
            if content or calls or finish is not None:
                events.append(StreamEvent(delta=content or "", finish_reason=finish, tool_calls=calls))
        usage = _usage_event(payload.get("usage"))
        if usage is not None:
            events.append(usage)
        return events

    def finish(self) -> list[StreamEvent]:
        partial = self._sse.has_partial_event
        self._sse.close()
        if not self._done and not self._finished:
            detail = " (an event was cut off)" if partial else ""
            raise StreamProtocolError(f"stream ended before a finish_reason or [DONE]{detail}")
        return []


class OpenAIAdapter:
    def build_request(self, entry: ProviderEntry, request: ChatRequest, api_key: str | None) -> HttpRequest:
        p = request.parameters
        body: dict[str, Any] = {
            "model": entry.upstream_model,
            "messages": [_message(m) for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if p.max_tokens > 0:
            body["max_tokens"] = p.max_tokens
        if p.temperature is not None:
            body["temperature"] = p.temperature
        if p.top_p is not None:
            body["top_p"] = p.top_p
        if p.stop:
            body["stop"] = list(p.stop)
        if p.seed is not None:
            body["seed"] = p.seed
        body.update(_tool_fields(p))
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key}"
        return HttpRequest(f"{entry.base_url}/chat/completions", headers, body)

    def stream_decoder(self) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder()

    def decode_body(self, body: bytes) -> list[StreamEvent]:
        payload = json_object(body, "response body")
        if "error" in payload:
            raise UpstreamStreamError(describe_upstream_error(payload))
        try:
            choice = payload["choices"][0]
            message = choice["message"]
            content = message.get("content") or ""
            finish = choice.get("finish_reason") or "stop"
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise StreamProtocolError(f"response body lacks choices[0].message ({exc!r})") from exc
        if not isinstance(content, str):
            raise StreamProtocolError("response choices[0].message.content is not a string")
        calls = _tool_call_deltas(message.get("tool_calls"), "response choices[0].message")
        events = [StreamEvent(delta=content, finish_reason=finish, tool_calls=calls)]
        usage = _usage_event(payload.get("usage"))
        if usage is not None:
            events.append(usage)
        return events
