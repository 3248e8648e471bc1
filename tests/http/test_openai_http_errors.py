"""Bad input, caller keys, dropped streams and the wire format of the HTTP API, with a raw HTTP client."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from barp_sidecar.app import SidecarApp
from barp_sidecar.http.server import key_digest
from barp_sidecar.providers.fake_server import FakeBehaviour, FakeProvider
from tests.support.openai_http import base_url, http_sidecar
from tests.support.providers import all_live, write_catalog
from tests.support.sidecar import ARMS

USER = [{"role": "user", "content": "hello there"}]
AUTO = {"model": "barp-auto", "messages": USER}


async def post(app: SidecarApp, body: Any, *, raw: bytes | None = None, **headers: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        data = raw if raw is not None else json.dumps(body).encode()
        async with http.post(
            f"{base_url(app)}/chat/completions",
            data=data,
            headers={"Content-Type": "application/json", **headers},
        ) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except json.JSONDecodeError:
                return response.status, text


def error_of(payload: Any) -> dict[str, Any]:
    """The OpenAI error object; every field of the shape is present."""
    assert set(payload) == {"error"}
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


@pytest.mark.parametrize(
    ("body", "raw", "status", "param", "text"),
    [
        (None, b"{not json", 400, "body", "could not parse"),
        ({**AUTO, "frobnicate": 1}, None, 400, "frobnicate", "Unrecognized"),
        ({**AUTO, "logit_bias": {}}, None, 400, "logit_bias", "not supported"),
        ({"model": "barp-auto", "messages": []}, None, 400, "messages", "at least one message"),
        ({"model": "barp-auto"}, None, 400, "messages", "required"),
        ({"messages": USER}, None, 400, "model", "must be a string"),
        ({"model": "gpt-nope", "messages": USER}, None, 404, "model", "does not exist"),
        ({**AUTO, "temperature": 9}, None, 400, "temperature", "[0, 2]"),
        ({**AUTO, "n": 2}, None, 400, "n", "n=1"),
        ({**AUTO, "messages": [{"role": "robot", "content": "x"}]}, None, 400, "messages[0].role", ""),
        ({**AUTO, "barp": {"quality_weight": 2}}, None, 400, "", "quality"),
        ({**AUTO, "barp": {"colour": 1}}, None, 400, "barp.colour", ""),
        ({**AUTO, "barp": {"allowed_models": ["x"]}}, None, 400, "", "x"),
        ({**AUTO, "stream_options": {"include_usage": True}}, None, 400, "stream_options", "stream is true"),
        ({**AUTO, "stream": True, "stream_options": {"x": 1}}, None, 400, "stream_options.x", "unrecognized"),
        ({**AUTO, "tool_choice": "required"}, None, 400, "tool_choice", "tools"),
    ],
)  # fmt: skip
async def test_bad_requests_get_openai_errors_naming_the_field(
    live: SidecarApp,
    fake: FakeProvider,
    body: Any,
    raw: bytes | None,
    status: int,
    param: str,
    text: str,
) -> None:
    got_status, payload = await post(live, body, raw=raw)
    error = error_of(payload)
    assert got_status == status, error
    assert error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param
    assert text in error["message"]
    assert fake.stats.requests == 0  # nothing reached a provider


async def test_headers_set_preference_and_mask_and_body_wins(live: SidecarApp, fake: FakeProvider) -> None:
    body = {"model": "barp-auto", "messages": USER}
    status, payload = await post(
        live, body, **{"x-barp-allowed-models": ARMS[2], "x-barp-quality-weight": "0.1"}
    )
    assert status == 200 and payload["model"] == ARMS[2]
    assert payload["barp"]["quality_weight"] == 0.1 and payload["barp"]["propensity"] == 1.0
    status, payload = await post(
        live, {**body, "barp": {"allowed_models": [ARMS[3]]}}, **{"x-barp-allowed-models": ARMS[2]}
    )
    assert status == 200 and payload["model"] == ARMS[3]
    status, payload = await post(live, body, **{"x-barp-quality-weight": "lots"})
    assert status == 400 and error_of(payload)["param"] == "x-barp-quality-weight"


async def test_stream_is_server_sent_events_exactly_as_openai_sends_them(live: SidecarApp) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base_url(live)}/chat/completions",
            json={**AUTO, "stream": True},
        ) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            decision_id = response.headers["x-barp-decision-id"]
            body = (await response.read()).decode()
    events = body.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert {c["id"] for c in chunks} == {f"chatcmpl-{decision_id}"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert all("usage" not in c for c in chunks)  # only with stream_options.include_usage
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-1]["barp"]["cost_usd"] > 0


async def test_a_burst_and_a_trickle_stream_the_same_valid_events(
    live: SidecarApp, fake: FakeProvider
) -> None:
    # Tokens the sidecar read together are one content chunk; the answer and the event grammar are the same.
    streams = {}
    async with aiohttp.ClientSession() as http:
        for name, interval_ms in (("burst", 0.0), ("trickle", 15.0)):
            fake.push(FakeBehaviour(tokens=20, token_interval_ms=interval_ms))
            body = {**AUTO, "stream": True, "stream_options": {"include_usage": True}}
            async with http.post(f"{base_url(live)}/chat/completions", json=body) as response:
                assert response.status == 200
                streams[name] = (await response.read()).decode()
    contents = {}
    for name, text in streams.items():
        events = text.split("\n\n")
        assert events[-2:] == ["data: [DONE]", ""]
        assert all(e.startswith("data: {") for e in events[:-2])
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]][-1] == "stop"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 20
        contents[name] = [c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1]]
        assert "".join(contents[name]) == "".join(f"tok{i} " for i in range(20))
    assert len([c for c in contents["burst"] if c]) == 1
    assert len([c for c in contents["trickle"] if c]) >= 10


async def test_a_stream_failing_after_its_first_token_ends_with_an_error_event(
    live: SidecarApp, fake: FakeProvider
) -> None:
    fake.push(FakeBehaviour(malformed="truncated", tokens=3))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base_url(live)}/chat/completions",
            json={**AUTO, "stream": True},
        ) as response:
            body = (await response.read()).decode()
    events = [e for e in body.split("\n\n") if e]
    assert "data: [DONE]" not in body
    error = error_of(json.loads(events[-1].removeprefix("data: ")))
    assert error["type"] == "service_unavailable_error" and "protocol" in error["message"]


async def test_every_provider_failing_before_the_answer_is_a_503(
    live: SidecarApp, fake: FakeProvider
) -> None:
    fake.push(*[FakeBehaviour(status=400)] * 3)  # not retryable: the routed model and two fallbacks
    status, payload = await post(live, {**AUTO, "stream": True})
    assert status == 503 and error_of(payload)["code"] == "unavailable"


async def test_client_dropping_a_stream_cancels_the_provider_call(
    live: SidecarApp, fake: FakeProvider
) -> None:
    fake.push(FakeBehaviour(tokens=20, hang_after_tokens=2))
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{base_url(live)}/chat/completions",
            json={**AUTO, "stream": True},
        )
        first = await response.content.readline()
        assert first.startswith(b"data: {")
        response.close()  # the caller goes away mid-answer
    await asyncio.wait_for(fake.wait_idle(), timeout=5.0)
    assert fake.stats.cancelled == 1
    # Nothing of that call is left running in the sidecar.
    for _ in range(50):
        leftovers = [t for t in asyncio.all_tasks() if "_chat_completions" in repr(t.get_coro())]
        if not leftovers:
            break
        await asyncio.sleep(0.02)
    assert leftovers == []


async def test_anthropic_model_refuses_json_mode_and_maps_tools(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url), api_style="anthropic")
    async with http_sidecar(checkpoint, catalog) as app:
        status, payload = await post(app, {**AUTO, "response_format": {"type": "json_object"}})
        assert status == 400 and error_of(payload)["param"] == "response_format"
        tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
        status, payload = await post(
            app,
            {
                "model": "barp-auto",
                "messages": [{"role": "system", "content": "sys"}, *USER],
                "tools": [tool],
                "tool_choice": {"type": "function", "function": {"name": "lookup"}},
            },
        )
    assert status == 200, payload
    call = payload["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "lookup", "arguments": '{"query": "fake"}'}
    assert payload["choices"][0]["finish_reason"] == "tool_calls"
    sent = fake.stats.bodies[-1]
    assert sent["tools"] == [{"name": "lookup", "input_schema": {"type": "object"}}]
    assert sent["tool_choice"] == {"type": "tool", "name": "lookup"} and sent["system"] == "sys"


async def test_bearer_keys_are_checked_against_their_digests(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    key = "sk-barp-caller-0123456789"
    async with http_sidecar(checkpoint, catalog, http={"api_key_sha256": key_digest(key)}) as app:
        body = {"model": "barp-auto", "messages": USER}
        missing_status, missing = await post(app, body)
        wrong_status, _ = await post(app, body, Authorization="Bearer sk-wrong")
        ok_status, _ = await post(app, body, Authorization=f"Bearer {key}")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{app.http_port}/healthz") as health:
                assert health.status == 200  # probes need no key
    assert (missing_status, wrong_status, ok_status) == (401, 401, 200)
    assert error_of(missing)["code"] == "invalid_api_key"


async def test_large_bodies_unknown_paths_and_methods_get_openai_errors(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    async with http_sidecar(checkpoint, catalog, http={"max_body_bytes": 2048}) as app:
        big = {"model": "barp-auto", "messages": [{"role": "user", "content": "x" * 4096}]}
        status, payload = await post(app, big)
        assert status == 413 and "http.max_body_bytes" in error_of(payload)["message"]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base_url(app)}/engines") as missing:
                assert missing.status == 404 and error_of(await missing.json())
            async with http.get(f"{base_url(app)}/chat/completions") as wrong_method:
                assert wrong_method.status == 405 and error_of(await wrong_method.json())


async def test_access_log_has_the_decision_and_no_prompt_unless_asked(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    secret = "my secret prompt text"
    for log_prompts in (False, True):
        async with http_sidecar(checkpoint, catalog, logging={"log_prompts": log_prompts}) as app:
            with capture_logs() as logs:
                status, payload = await post(
                    app, {"model": "barp-auto", "messages": [{"role": "user", "content": secret}]}
                )
        access = [e for e in logs if e["event"] == "http"]
        assert status == 200 and len(access) == 1
        assert access[0]["decision_id"] == payload["barp"]["decision_id"] and access[0]["status"] == 200
        assert (secret in repr(logs)) is log_prompts


async def test_disabled_http_binds_nothing_and_server_started_reports_the_port(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    with capture_logs() as logs:
        async with http_sidecar(checkpoint, catalog, http={"enabled": False}) as app:
            assert app.http is None and app.http_port is None
        async with http_sidecar(checkpoint, catalog) as app:
            port = app.http_port
    started = [e for e in logs if e["event"] == "server_started"]
    assert [e["http_port"] for e in started] == [None, port] and port
