from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from barp_sidecar.errors import ConfigError, InvalidArgument
from barp_sidecar.providers.adapter import StreamProtocolError, UpstreamStreamError
from barp_sidecar.providers.anthropic_adapter import AnthropicAdapter
from barp_sidecar.providers.api_styles import ADAPTERS, API_STYLES, adapter_for
from barp_sidecar.providers.catalog import ProviderEntry, parse_catalog
from barp_sidecar.providers.chat import (
    ChatMessage,
    ChatRequest,
    GenerationParameters,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    coalesce,
)
from barp_sidecar.providers.openai_adapter import OpenAIAdapter

ENTRY = ProviderEntry(model="m", enabled=True, base_url="https://x.test/v1", upstream_model="up-1")
REQUEST = ChatRequest(
    (ChatMessage("system", "be brief"), ChatMessage("user", "hi"), ChatMessage("assistant", "yo")),
    GenerationParameters(max_tokens=50, temperature=1.5, top_p=0.9, stop=("END",), seed=3),
)


def sse(*payloads: object) -> bytes:
    return b"".join(
        b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n\n" for p in payloads
    )


def openai_chunk(content: str | None = None, finish: str | None = None) -> dict[str, object]:
    delta = {} if content is None else {"content": content}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_adapter_for_styles() -> None:
    assert isinstance(adapter_for("openai"), OpenAIAdapter)
    assert isinstance(adapter_for("anthropic"), AnthropicAdapter)
    with pytest.raises(ValueError, match="known: \\['openai', 'anthropic'\\]"):
        adapter_for("soap")


def _dicts(node: object) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            yield from _dicts(child)


def test_the_registry_is_the_one_list_of_api_styles() -> None:
    """The catalog validation and the chart's schema take their api_style names from the registry."""
    assert API_STYLES == tuple(ADAPTERS) == ("openai", "anthropic")
    schema = json.loads((Path(__file__).parents[2] / "helm/barp-sidecar/values.schema.json").read_text())
    entries = [node for node in _dicts(schema) if "api_style" in node.get("properties", {})]
    assert entries and all(e["properties"]["api_style"]["enum"] == list(API_STYLES) for e in entries)
    with pytest.raises(ConfigError, match=r"api_style.*must be one of \('openai', 'anthropic'\)"):
        parse_catalog({"providers": [{"arm": "a", "enabled": False, "api_style": "soap"}]})


def test_openai_request_passes_parameters_through() -> None:
    http = OpenAIAdapter().build_request(ENTRY, REQUEST, "sk-secret")
    assert http.url == "https://x.test/v1/chat/completions"
    assert http.headers["Authorization"] == "Bearer sk-secret"
    assert "sk-secret" not in repr(http)
    assert http.body == {
        "model": "up-1",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "temperature": 1.5,
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 3,
    }
    bare = OpenAIAdapter().build_request(ENTRY, ChatRequest((ChatMessage("user", "q"),)), None)
    assert "Authorization" not in bare.headers
    assert not {"max_tokens", "temperature", "top_p", "stop", "seed"} & set(bare.body)


def test_openai_stream_decodes_deltas_finish_and_usage() -> None:
    decoder = OpenAIAdapter().stream_decoder()
    data = sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        openai_chunk("Hel"),
        openai_chunk("lo"),
        openai_chunk(None, "stop"),
        {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2}},
        b"[DONE]",
    )
    events = [e for i in range(0, len(data), 9) for e in decoder.feed(data[i : i + 9])] + decoder.finish()
    assert events == [
        StreamEvent(delta="Hel"),
        StreamEvent(delta="lo"),
        StreamEvent(finish_reason="stop"),
        StreamEvent(input_tokens=12, output_tokens=2),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"data: {not json\n\n", "not JSON"),
        (b"data: [1, 2]\n\n", "not a JSON object"),
        (b'data: {"choices": {}}\n\n', "not a list"),
        (b'data: {"choices": [{"delta": {"content": 5}}]}\n\n', "not a string"),
        (b"data: \xff\n\n", "malformed event stream"),
        (sse(b"[DONE]", openai_chunk("late")), r"after \[DONE\]"),
    ],
)
def test_openai_malformed_streams_raise_protocol_errors(data: bytes, message: str) -> None:
    with pytest.raises(StreamProtocolError, match=message):
        OpenAIAdapter().stream_decoder().feed(data)


def test_openai_truncated_stream_is_a_protocol_error() -> None:
    decoder = OpenAIAdapter().stream_decoder()
    assert decoder.feed(sse(openai_chunk("partial")) + b'data: {"cho') == [StreamEvent(delta="partial")]
    with pytest.raises(StreamProtocolError, match="cut off"):
        decoder.finish()


def test_openai_stream_without_done_but_with_finish_is_complete() -> None:
    decoder = OpenAIAdapter().stream_decoder()
    decoder.feed(sse(openai_chunk("a", "length")))
    assert decoder.finish() == []


def test_openai_error_event() -> None:
    with pytest.raises(UpstreamStreamError, match="type=server_error") as caught:
        OpenAIAdapter().stream_decoder().feed(
            sse({"error": {"type": "server_error", "message": "my prompt"}})
        )
    assert "my prompt" not in str(caught.value)


def test_openai_non_streamed_body() -> None:
    body = json.dumps(
        {
            "choices": [{"message": {"content": "whole"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }
    ).encode()
    assert OpenAIAdapter().decode_body(body) == [
        StreamEvent(delta="whole", finish_reason="length"),
        StreamEvent(input_tokens=3, output_tokens=1),
    ]
    for bad in (b"{x", b"[]", b'{"choices": []}'):
        with pytest.raises(StreamProtocolError):
            OpenAIAdapter().decode_body(bad)
    with pytest.raises(UpstreamStreamError):
        OpenAIAdapter().decode_body(b'{"error": {"message": "no"}}')


def test_anthropic_request_moves_system_and_requires_max_tokens() -> None:
    http = AnthropicAdapter().build_request(ENTRY, REQUEST, "sk-ant")
    assert http.url == "https://x.test/v1/messages"
    assert http.headers["x-api-key"] == "sk-ant" and http.headers["anthropic-version"] == "2023-06-01"
    assert http.body == {
        "model": "up-1",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        "max_tokens": 50,
        "stream": True,
        "system": "be brief",
        "temperature": 1.0,  # clamped to Anthropic's [0, 1]
        "top_p": 0.9,
        "stop_sequences": ["END"],
    }
    bare = AnthropicAdapter().build_request(ENTRY, ChatRequest((ChatMessage("user", "q"),)), None)
    assert bare.body["max_tokens"] == ENTRY.default_max_tokens
    assert "x-api-key" not in bare.headers and "system" not in bare.body


def anthropic_stream(*events: tuple[str, dict[str, object]]) -> bytes:
    return b"".join(
        f"event: {kind}\ndata: {json.dumps({'type': kind, **payload})}\n\n".encode()
        for kind, payload in events
    )


def test_anthropic_stream_decodes_text_stop_reason_and_usage() -> None:
    decoder = AnthropicAdapter().stream_decoder()
    data = anthropic_stream(
        ("message_start", {"message": {"usage": {"input_tokens": 25, "output_tokens": 1}}}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": "{"}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": " there"}}),
        ("content_block_stop", {"index": 0}),
        ("message_delta", {"delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 15}}),
        ("message_stop", {}),
    )
    events = [e for i in range(0, len(data), 11) for e in decoder.feed(data[i : i + 11])] + decoder.finish()
    assert events == [
        StreamEvent(input_tokens=25),
        StreamEvent(delta="Hi"),
        StreamEvent(delta=" there"),
        StreamEvent(finish_reason="length", output_tokens=15),
    ]


def test_anthropic_errors() -> None:
    with pytest.raises(UpstreamStreamError, match="type=overloaded_error"):
        AnthropicAdapter().stream_decoder().feed(
            anthropic_stream(("error", {"error": {"type": "overloaded_error", "message": "busy"}}))
        )
    with pytest.raises(StreamProtocolError, match="not JSON"):
        AnthropicAdapter().stream_decoder().feed(b"event: content_block_delta\ndata: {oops\n\n")
    with pytest.raises(StreamProtocolError, match="text string"):
        AnthropicAdapter().stream_decoder().feed(
            anthropic_stream(("content_block_delta", {"delta": {"type": "text_delta", "text": 1}}))
        )
    decoder = AnthropicAdapter().stream_decoder()
    decoder.feed(anthropic_stream(("content_block_delta", {"delta": {"type": "text_delta", "text": "x"}})))
    with pytest.raises(StreamProtocolError, match="message_stop"):
        decoder.finish()


def test_anthropic_non_streamed_body() -> None:
    body = json.dumps(
        {
            "type": "message",
            "content": [
                {"type": "text", "text": "a"},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": 1}},
                {"type": "text", "text": "b"},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 4, "output_tokens": 2},
        }
    ).encode()
    assert AnthropicAdapter().decode_body(body) == [
        StreamEvent(
            delta="ab",
            finish_reason="tool_calls",
            input_tokens=4,
            output_tokens=2,
            tool_calls=(ToolCallDelta(0, "toolu_1", "lookup", '{"q": 1}'),),
        )
    ]
    with pytest.raises(UpstreamStreamError):
        AnthropicAdapter().decode_body(b'{"type": "error", "error": {"type": "x", "message": "y"}}')
    with pytest.raises(StreamProtocolError):
        AnthropicAdapter().decode_body(b'{"type": "message"}')


TOOL_REQUEST = ChatRequest(
    (
        ChatMessage("user", "weather?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("call_1", "lookup", '{"q": "Paris"}'),)),
        ChatMessage("tool", "sunny", tool_call_id="call_1"),
        ChatMessage("tool", "warm", tool_call_id="call_2"),
    ),
    GenerationParameters(
        tools=(ToolSpec("lookup", "Look it up", {"type": "object"}),),
        tool_choice_name="lookup",
        response_format={"type": "json_object"},
    ),
)


def test_openai_passes_tools_and_decodes_streamed_and_whole_tool_calls() -> None:
    body = OpenAIAdapter().build_request(ENTRY, TOOL_REQUEST, None).body
    assert body["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"q": "Paris"}'},
            }
        ],
    }
    assert body["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "lookup", "description": "Look it up", "parameters": {"type": "object"}},
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert body["response_format"] == {"type": "json_object"}
    piece = {"index": 0, "id": "c", "type": "function", "function": {"name": "lookup", "arguments": '{"q"'}}
    rest = {"index": 0, "function": {"arguments": ": 1}"}}
    decoder = OpenAIAdapter().stream_decoder()
    events = decoder.feed(
        sse(
            {"choices": [{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {"tool_calls": [rest]}, "finish_reason": "tool_calls"}]},
            b"[DONE]",
        )
    )
    assert [e.tool_calls for e in events] == [
        (ToolCallDelta(0, "c", "lookup", '{"q"'),),
        (ToolCallDelta(0, None, None, ": 1}"),),
    ]
    assert events[-1].finish_reason == "tool_calls" and events[0].has_content
    whole = json.dumps(
        {"choices": [{"message": {"content": None, "tool_calls": [piece]}, "finish_reason": "tool_calls"}]}
    ).encode()
    (event,) = OpenAIAdapter().decode_body(whole)
    assert event.delta == "" and event.tool_calls == (ToolCallDelta(0, "c", "lookup", '{"q"'),)
    with pytest.raises(StreamProtocolError):
        decoder = OpenAIAdapter().stream_decoder()
        decoder.feed(sse({"choices": [{"index": 0, "delta": {"tool_calls": "x"}}]}))


def test_anthropic_maps_tools_and_refuses_json_mode() -> None:
    with pytest.raises(InvalidArgument) as caught:
        AnthropicAdapter().build_request(ENTRY, TOOL_REQUEST, None)
    assert caught.value.field == "response_format"
    request = ChatRequest(
        TOOL_REQUEST.messages,
        GenerationParameters(tools=TOOL_REQUEST.parameters.tools, tool_choice="required"),
    )
    body = AnthropicAdapter().build_request(ENTRY, request, None).body
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "Paris"}}],
    }
    # Consecutive tool results share one user turn.
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "warm"},
        ],
    }
    assert body["tools"] == [
        {"name": "lookup", "description": "Look it up", "input_schema": {"type": "object"}}
    ]
    assert body["tool_choice"] == {"type": "any"}
    bad = ChatRequest((ChatMessage("assistant", "", tool_calls=(ToolCall("c", "lookup", "{oops"),)),))
    with pytest.raises(InvalidArgument) as caught:
        AnthropicAdapter().build_request(ENTRY, bad, None)
    assert caught.value.field == "messages[0].tool_calls[0].function.arguments"


def test_tool_call_events_are_not_merged_by_coalesce() -> None:
    call = StreamEvent(tool_calls=(ToolCallDelta(0, "c", "f", "{"),))
    assert coalesce([StreamEvent(delta="a"), call, StreamEvent(delta="b")]) == [
        StreamEvent(delta="a"),
        call,
        StreamEvent(delta="b"),
    ]
