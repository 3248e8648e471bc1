"""The real ``openai`` Python SDK (sync and async) against the sidecar's HTTP API and the fake provider."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai
import pytest

from barp_sidecar.app import SidecarApp
from barp_sidecar.providers.fake_server import FAKE_TOOL_ARGUMENTS, FakeProvider
from tests.support.openai_http import base_url
from tests.support.sidecar import ARMS

FULL_ANSWER = "".join(f"tok{i} " for i in range(8))
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}


def client(app: SidecarApp) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url(app), api_key="unused", max_retries=0, timeout=10.0)


async def test_async_sdk_non_streamed_answer_names_the_model_and_the_decision(
    live: SidecarApp, fake: FakeProvider
) -> None:
    async with client(live) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="barp-auto",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "two words"}],
            max_tokens=50,
            temperature=0.3,
            stop=["\n\n"],
            response_format={"type": "json_object"},
            extra_body={"barp": {"quality_weight": 0.9, "request_id": "req-1"}},
        )
    completion = raw.parse()
    decision_id = raw.headers["x-barp-decision-id"]
    assert completion.model in ARMS
    assert completion.choices[0].message.content == FULL_ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    extension = completion.model_extra["barp"]  # type: ignore[index]
    assert extension["decision_id"] == decision_id and completion.id == f"chatcmpl-{decision_id}"
    assert extension["routed_model"] == completion.model and extension["quality_weight"] == 0.9
    assert extension["cost_usd"] == pytest.approx((12 * 1.0 + 8 * 2.0) / 1e6)
    assert raw.headers["x-request-id"] == "req-1"
    # The same forwarding path as gRPC Complete: parameters reached the provider unchanged.
    sent = fake.stats.bodies[-1]
    assert sent["model"] == f"up-{completion.model}"
    assert (sent["max_tokens"], sent["temperature"], sent["stop"]) == (50, 0.3, ["\n\n"])
    assert sent["response_format"] == {"type": "json_object"}


async def test_async_sdk_streams_chunks_usage_and_done(live: SidecarApp) -> None:
    async with client(live) as sdk:
        stream = await sdk.chat.completions.create(
            model="barp-auto",
            messages=[{"role": "user", "content": "stream please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == FULL_ANSWER
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["barp"]["decision_id"]  # type: ignore[index]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


async def test_sync_sdk_streamed_and_not_from_a_thread(live: SidecarApp) -> None:
    def call() -> tuple[str, str]:
        with openai.OpenAI(base_url=base_url(live), api_key="unused", max_retries=0, timeout=10.0) as sdk:
            whole = sdk.chat.completions.create(
                model=ARMS[1], messages=[{"role": "user", "content": "pinned model"}]
            )
            parts = sdk.chat.completions.create(
                model=ARMS[1], messages=[{"role": "user", "content": "pinned model"}], stream=True
            )
            streamed = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
            assert whole.model == ARMS[1]  # naming an enabled model pins it
            return whole.choices[0].message.content or "", streamed

    whole, streamed = await asyncio.to_thread(call)
    assert whole == streamed == FULL_ANSWER


async def test_tool_call_round_trip_streamed_and_not(live: SidecarApp, fake: FakeProvider) -> None:
    messages: list[dict[str, object]] = [{"role": "user", "content": "Weather in Paris?"}]
    async with client(live) as sdk:
        completion = await sdk.chat.completions.create(
            model="barp-auto", messages=messages, tools=[WEATHER_TOOL], tool_choice="auto"
        )
        stream = await sdk.chat.completions.create(
            model="barp-auto", messages=messages, tools=[WEATHER_TOOL], stream=True
        )
        pieces = [c.choices[0].delta.tool_calls for c in [c async for c in stream] if c.choices]
        call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert completion.choices[0].finish_reason == "tool_calls"
        assert completion.choices[0].message.content is None
        assert (call.function.name, call.function.arguments) == ("get_weather", FAKE_TOOL_ARGUMENTS)
        streamed = [p for group in pieces if group for p in group]
        assert streamed[0].id == call.id and streamed[0].function.name == "get_weather"
        assert "".join(p.function.arguments or "" for p in streamed) == FAKE_TOOL_ARGUMENTS
        assert fake.stats.bodies[-1]["tools"] == [WEATHER_TOOL]
        # Answer the call: the tool result goes back, and the model answers in text.
        follow_up = await sdk.chat.completions.create(
            model="barp-auto",
            tools=[WEATHER_TOOL],
            messages=[
                *messages,
                completion.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
            ],
        )
    assert follow_up.choices[0].message.content == FULL_ANSWER
    sent = fake.stats.bodies[-1]["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == FAKE_TOOL_ARGUMENTS
    assert sent[2] == {"role": "tool", "content": "sunny", "tool_call_id": call.id}


async def test_models_lists_the_routed_name_and_enabled_models(live: SidecarApp) -> None:
    async with client(live) as sdk:
        models = [m.id async for m in sdk.models.list()]
        one = await sdk.models.retrieve(ARMS[0])
        with pytest.raises(openai.NotFoundError):
            await sdk.models.retrieve("no-such-model")
    assert models == ["barp-auto", *sorted(ARMS)]
    assert one.id == ARMS[0]


async def test_feedback_records_quality_for_the_decision(live: SidecarApp) -> None:
    async with client(live) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="barp-auto", messages=[{"role": "user", "content": "rate me"}]
        )
    decision_id = raw.headers["x-barp-decision-id"]
    url = f"{base_url(live)}/feedback"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"decision_id": decision_id, "quality": 0.8}) as first:
            assert first.status == 200 and (await first.json())["recorded"] is True
        async with http.post(url, json={"decision_id": decision_id, "quality": 0.8}) as again:
            assert again.status == 200 and (await again.json())["recorded"] is False  # idempotent
        async with http.post(url, json={"decision_id": "nope", "quality": 0.8}) as unknown:
            assert unknown.status == 404 and (await unknown.json())["error"]["code"] == "not_found"
        async with http.post(url, json={"decision_id": decision_id, "quality": 3}) as bad:
            error = (await bad.json())["error"]
            assert bad.status == 400 and error["param"] == "quality"
    assert live.learning is not None and live.learning.recorder is not None
    assert live.learning.recorder.counters.recorded == 1


async def test_sdk_sees_openai_errors_with_their_status(live: SidecarApp) -> None:
    async with client(live) as sdk:
        with pytest.raises(openai.NotFoundError) as missing:
            await sdk.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.BadRequestError) as empty:
            await sdk.chat.completions.create(model="barp-auto", messages=[])
    assert missing.value.code == "model_not_found"
    assert json.dumps(empty.value.body).count("messages") >= 1
