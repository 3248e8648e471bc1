"""OpenAI-compatible chat completions (``POST {base_url}/chat/completions`` with ``stream: true``).

Builds the request (parameters passed through; ``stream_options.include_usage`` asks for the final usage
chunk) and decodes the SSE stream: ``choices[0].delta.content`` deltas, ``finish_reason``, the ``usage``
chunk, ``data: [DONE]``. A stream that ends before a finish reason or ``[DONE]`` is a protocol error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from barp_sidecar.providers.adapter import (
    HttpRequest,
    StreamProtocolError,
    UpstreamStreamError,
    json_object,
)
from barp_sidecar.providers.chat import ChatRequest, StreamEvent
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


def _error_text(payload: dict[str, Any]) -> str:
    error = payload.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or error)
    return str(error)


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
            raise UpstreamStreamError(_error_text(payload))
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
            if content or finish is not None:
                events.append(StreamEvent(delta=content or "", finish_reason=finish))
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
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
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
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key}"
        return HttpRequest(f"{entry.base_url}/chat/completions", headers, body)

    def stream_decoder(self) -> OpenAIStreamDecoder:
        return OpenAIStreamDecoder()

    def decode_body(self, body: bytes) -> list[StreamEvent]:
        payload = json_object(body, "response body")
        if "error" in payload:
            raise UpstreamStreamError(_error_text(payload))
        try:
            choice = payload["choices"][0]
            content = choice["message"]["content"] or ""
            finish = choice.get("finish_reason") or "stop"
        except (KeyError, IndexError, TypeError) as exc:
            raise StreamProtocolError(f"response body lacks choices[0].message.content ({exc!r})") from exc
        if not isinstance(content, str):
            raise StreamProtocolError("response choices[0].message.content is not a string")
        events = [StreamEvent(delta=content, finish_reason=finish)]
        usage = _usage_event(payload.get("usage"))
        if usage is not None:
            events.append(usage)
        return events
