"""Anthropic Messages API (``POST {base_url}/messages`` with ``stream: true``).

Builds the request (system messages go to the top-level ``system`` field; ``max_tokens`` is required, so
the catalog's ``default_max_tokens`` fills in for 0) and decodes the event stream: ``message_start``
(input tokens), ``content_block_delta`` (text), ``message_delta`` (stop reason, output tokens),
``message_stop``, ``ping``, ``error``. Stop reasons are mapped to OpenAI's vocabulary ("stop", "length").
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

ANTHROPIC_VERSION = "2023-06-01"
_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _error_text(payload: dict[str, Any]) -> str:
    error = payload.get("error")
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {error.get('message', '')}"
    return str(error)


class AnthropicStreamDecoder:
    def __init__(self) -> None:
        self._sse = SSEParser()
        self._stopped = False

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
            raise UpstreamStreamError(_error_text(payload))
        if kind == "message_start":
            message = payload.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                return StreamEvent(input_tokens=_count(usage.get("input_tokens")))
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
            return None  # tool-use / thinking deltas are not text
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
            "messages": [
                {"role": m.role, "content": m.content} for m in request.messages if m.role != "system"
            ],
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
            raise UpstreamStreamError(_error_text(payload))
        content = payload.get("content")
        if not isinstance(content, list):
            raise StreamProtocolError("response body lacks a content list")
        text = "".join(
            block.get("text", "")
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
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
            )
        ]
