"""The provider-neutral chat request and stream event types, their validation, and the routing text.

Owns what a Complete call asks for (messages + generation parameters) independent of protobuf and of any
provider's wire format, and what every adapter's stream decoder produces (``StreamEvent``). Validation
raises ``InvalidArgument`` naming the field (``messages[2].role``) so the caller can fix the request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from barp_sidecar.errors import InvalidArgument

ROLES = ("system", "user", "assistant", "tool")
ROUTING_TEXT_MODES = ("last_user", "conversation")
TOOL_CHOICES = ("auto", "none", "required")
MAX_STOP_SEQUENCES = 4
MAX_MESSAGES = 1024
MAX_TOOLS = 128
T = TypeVar("T")


@dataclass(frozen=True)
class ToolCall:
    """A function call the assistant made: ``arguments`` is the JSON text exactly as the model wrote it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str
    # An assistant turn that called tools (its content may then be empty).
    tool_calls: tuple[ToolCall, ...] = ()
    # A ``tool`` message answers the call with this id.
    tool_call_id: str | None = None


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call; ``parameters`` is its JSON Schema (passed through unchanged)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationParameters:
    """Passed through to the provider; None / 0 / () = the provider's default."""

    max_tokens: int = 0
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Function calling, in OpenAI's vocabulary: the tools, and "auto" | "none" | "required" or the name
    # of the one tool that must be called (``tool_choice_name``).
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None
    tool_choice_name: str | None = None
    # OpenAI's ``response_format`` object ({"type": "json_object"} / "json_schema"), passed through.
    response_format: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[ChatMessage, ...]
    parameters: GenerationParameters = GenerationParameters()


@dataclass(frozen=True)
class TokenUsage:
    """Tokens as counted by the provider (or estimated when ``estimated``)."""

    input_tokens: int
    output_tokens: int
    estimated: bool = False


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a streamed tool call: ``index`` names the call; its first piece carries id and name."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class StreamEvent:
    """One decoded piece of a provider's stream: a text delta, the finish reason, token counts, or several.

    Token counts are None when this event does not report them (Anthropic sends the input count first and
    the output count last; OpenAI sends both in a final usage chunk when asked to).
    """

    delta: str = ""
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()

    @property
    def has_content(self) -> bool:
        """Text, a tool call or the finish reason: the answer has started (retries would repeat it)."""
        return bool(self.delta or self.tool_calls or self.finish_reason is not None)


def validate_chat_request(request: ChatRequest) -> ChatRequest:
    """Check a request before routing it; raise InvalidArgument naming the first bad field."""
    if not request.messages:
        raise InvalidArgument("messages", "at least one message is required")
    if len(request.messages) > MAX_MESSAGES:
        raise InvalidArgument("messages", f"at most {MAX_MESSAGES} messages, got {len(request.messages)}")
    for index, message in enumerate(request.messages):
        if message.role not in ROLES:
            raise InvalidArgument(f"messages[{index}].role", f"must be one of {ROLES}, not {message.role!r}")
        if not message.content and not message.tool_calls:
            raise InvalidArgument(f"messages[{index}].content", "must not be empty")
        if message.tool_calls and message.role != "assistant":
            raise InvalidArgument(f"messages[{index}].tool_calls", "only assistant messages call tools")
        if (message.role == "tool") != (message.tool_call_id is not None):
            raise InvalidArgument(
                f"messages[{index}].tool_call_id", "required on role 'tool' messages and only there"
            )
    if not any(m.role == "user" for m in request.messages):
        raise InvalidArgument("messages", "at least one message must have role 'user'")
    p = request.parameters
    if p.max_tokens < 0:
        raise InvalidArgument(
            "parameters.max_tokens", f"must be >= 0 (0 = provider default), not {p.max_tokens}"
        )
    if p.temperature is not None and not (math.isfinite(p.temperature) and 0.0 <= p.temperature <= 2.0):
        raise InvalidArgument("parameters.temperature", f"must be in [0, 2], not {p.temperature}")
    if p.top_p is not None and not (math.isfinite(p.top_p) and 0.0 < p.top_p <= 1.0):
        raise InvalidArgument("parameters.top_p", f"must be in (0, 1], not {p.top_p}")
    if len(p.stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgument(
            "parameters.stop", f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(p.stop)}"
        )
    for index, stop in enumerate(p.stop):
        if not stop:
            raise InvalidArgument(f"parameters.stop[{index}]", "must not be empty")
    _validate_tools(p)
    return request


def _validate_tools(p: GenerationParameters) -> None:
    if len(p.tools) > MAX_TOOLS:
        raise InvalidArgument("tools", f"at most {MAX_TOOLS} tools, got {len(p.tools)}")
    names = [tool.name for tool in p.tools]
    for index, name in enumerate(names):
        if not name:
            raise InvalidArgument(f"tools[{index}].function.name", "must not be empty")
        if name in names[:index]:
            raise InvalidArgument(f"tools[{index}].function.name", f"duplicate tool name {name!r}")
    if p.tool_choice is not None and p.tool_choice not in TOOL_CHOICES:
        raise InvalidArgument(
            "tool_choice", f"must be one of {TOOL_CHOICES} or a function, not {p.tool_choice!r}"
        )
    if p.tool_choice_name is not None and p.tool_choice_name not in names:
        raise InvalidArgument("tool_choice.function.name", f"{p.tool_choice_name!r} is not one of the tools")
    if (p.tool_choice is not None or p.tool_choice_name is not None) and not p.tools:
        raise InvalidArgument("tool_choice", "needs tools")


def routing_text(messages: Sequence[ChatMessage], mode: str, max_bytes: int) -> str:
    """The text the policy routes on: the last user message, or the conversation's tail.

    ``conversation`` joins ``role: content`` lines and keeps the last ``max_bytes`` UTF-8 bytes (the end of
    a conversation is what the next answer depends on; the encoder truncates again to its token budget).
    """
    if mode not in ROUTING_TEXT_MODES:
        raise ValueError(f"routing_text mode must be one of {ROUTING_TEXT_MODES}, not {mode!r}")
    if mode == "last_user":
        for message in reversed(messages):
            if message.role == "user":
                text = message.content
                break
        else:
            raise InvalidArgument("messages", "at least one message must have role 'user'")
    else:
        text = "\n".join(f"{m.role}: {m.content}" for m in messages)
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    # Cut on a character boundary: drop leading continuation bytes of a split code point.
    return encoded[-max_bytes:].decode("utf-8", errors="ignore")


def _first_set(value: T | None, fallback: T | None) -> T | None:
    return value if value is not None else fallback


def coalesce(events: Sequence[StreamEvent]) -> list[StreamEvent]:
    """Merge events that arrived together (one network read) into as few as possible, in order.

    Deltas concatenate; a finish reason and token counts join the event before them unless that would
    overwrite a value already there or put text after a finish reason. Forwarding one message per read
    instead of one per token keeps the per-token overhead off the hot path when tokens arrive in bursts.
    """
    merged: list[StreamEvent] = []
    for event in events:
        if merged:
            last = merged[-1]
            conflict = (
                bool(last.tool_calls or event.tool_calls)
                or (last.finish_reason is not None and (event.delta or event.finish_reason is not None))
                or (last.input_tokens is not None and event.input_tokens is not None)
                or (last.output_tokens is not None and event.output_tokens is not None)
            )
            if not conflict:
                merged[-1] = StreamEvent(
                    delta=last.delta + event.delta,
                    finish_reason=event.finish_reason
                    if event.finish_reason is not None
                    else last.finish_reason,
                    input_tokens=event.input_tokens if event.input_tokens is not None else last.input_tokens,
                    output_tokens=event.output_tokens
                    if event.output_tokens is not None
                    else last.output_tokens,
                )
                continue
        merged.append(event)
    return merged
