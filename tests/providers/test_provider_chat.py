from __future__ import annotations

import math

import pytest

from barp_sidecar.errors import InvalidArgument
from barp_sidecar.providers.chat import (
    ChatMessage,
    ChatRequest,
    GenerationParameters,
    StreamEvent,
    ToolCall,
    ToolSpec,
    coalesce,
    routing_text,
    validate_chat_request,
)


def request(*messages: tuple[str, str], **parameters: object) -> ChatRequest:
    return ChatRequest(
        tuple(ChatMessage(r, c) for r, c in messages),
        GenerationParameters(**parameters),  # type: ignore[arg-type]
    )


def test_a_valid_request_passes() -> None:
    valid = request(("system", "be brief"), ("user", "hi"), temperature=0.2, stop=("\n",), max_tokens=5)
    assert validate_chat_request(valid) is valid


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (request(), "messages"),
        (request(("wizard", "hi")), "messages[0].role"),
        (request(("user", "hi"), ("assistant", "")), "messages[1].content"),
        (request(("system", "only a system prompt")), "messages"),
        (request(("user", "hi"), max_tokens=-1), "parameters.max_tokens"),
        (request(("user", "hi"), temperature=math.nan), "parameters.temperature"),
        (request(("user", "hi"), temperature=2.5), "parameters.temperature"),
        (request(("user", "hi"), top_p=0.0), "parameters.top_p"),
        (request(("user", "hi"), stop=("a", "b", "c", "d", "e")), "parameters.stop"),
        (request(("user", "hi"), stop=("a", "")), "parameters.stop[1]"),
    ],
)
def test_bad_requests_name_the_field(bad: ChatRequest, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_chat_request(bad)
    assert caught.value.field == field
    assert str(caught.value).startswith(field)


def test_routing_text_last_user_message() -> None:
    messages = [ChatMessage("system", "sys"), ChatMessage("user", "first"), ChatMessage("assistant", "a")]
    messages.append(ChatMessage("user", "second"))
    messages.append(ChatMessage("assistant", "b"))
    assert routing_text(messages, "last_user", 1000) == "second"


def test_routing_text_conversation_keeps_the_tail_on_a_character_boundary() -> None:
    messages = [
        ChatMessage("user", "é" * 100),
        ChatMessage("assistant", "ok"),
        ChatMessage("user", "the end"),
    ]
    whole = routing_text(messages, "conversation", 10_000)
    assert whole == "user: " + "é" * 100 + "\nassistant: ok\nuser: the end"
    tail = routing_text(messages, "conversation", 41)  # an odd budget splits a 2-byte "é"
    assert whole.endswith(tail)
    assert tail.endswith("user: the end")
    assert len(tail.encode()) <= 41


def test_routing_text_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="routing_text"):
        routing_text([ChatMessage("user", "x")], "first_user", 10)


def test_coalesce_merges_what_arrived_together_without_losing_order() -> None:
    events = [
        StreamEvent(input_tokens=5),
        StreamEvent(delta="a"),
        StreamEvent(delta="b"),
        StreamEvent(finish_reason="stop"),
        StreamEvent(input_tokens=6, output_tokens=2),
    ]
    assert coalesce(events) == [
        StreamEvent(delta="ab", finish_reason="stop", input_tokens=5),
        StreamEvent(input_tokens=6, output_tokens=2),
    ]
    assert coalesce([]) == []
    # Text never moves after a finish reason.
    late = [StreamEvent(finish_reason="stop"), StreamEvent(delta="x")]
    assert coalesce(late) == late


def _tools_request(*messages: ChatMessage, **parameters: object) -> ChatRequest:
    return ChatRequest((ChatMessage("user", "q"), *messages), GenerationParameters(**parameters))  # type: ignore[arg-type]


CALL = ToolCall("call_1", "lookup", "{}")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (_tools_request(ChatMessage("tool", "result")), "messages[1].tool_call_id"),
        (_tools_request(ChatMessage("user", "x", tool_call_id="c")), "messages[1].tool_call_id"),
        (_tools_request(ChatMessage("user", "x", tool_calls=(CALL,))), "messages[1].tool_calls"),
        (_tools_request(tools=(ToolSpec(""),)), "tools[0].function.name"),
        (_tools_request(tools=(ToolSpec("a"), ToolSpec("a"))), "tools[1].function.name"),
        (_tools_request(tools=(ToolSpec("a"),), tool_choice="sometimes"), "tool_choice"),
        (_tools_request(tools=(ToolSpec("a"),), tool_choice_name="b"), "tool_choice.function.name"),
        (_tools_request(tool_choice="auto"), "tool_choice"),
    ],
)
def test_bad_tool_use_names_the_field(request_: ChatRequest, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_chat_request(request_)
    assert caught.value.field == field


def test_tool_turns_pass_validation() -> None:
    validate_chat_request(
        _tools_request(
            ChatMessage("assistant", "", tool_calls=(CALL,)),
            ChatMessage("tool", "sunny", tool_call_id="call_1"),
            tools=(ToolSpec("lookup"),),
            tool_choice="required",
        )
    )
