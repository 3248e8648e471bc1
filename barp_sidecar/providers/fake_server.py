"""A fake LLM provider (aiohttp) speaking the OpenAI chat-completions and Anthropic Messages APIs.

For tests, benchmarks and demos; binds 127.0.0.1 only. Behaviour per request comes from, in order: the
scripted queue (``push``), the 429 burst budget, the random error rate, then the default behaviour. It
can add latency, stream at a given token rate, fail with any status (with Retry-After), hang, send
malformed JSON / SSE / truncated streams, omit usage, and echo the caller's credentials or the request into
an error body (to prove neither reaches a log line or a status message). A request with ``tools`` whose
last message is not a tool result is answered with one call of the forced tool (``tool_choice``) or the
first tool, arguments ``FAKE_TOOL_ARGUMENTS`` streamed in two pieces, finish reason ``tool_calls`` /
``tool_use``. ``stats`` counts requests, concurrency and upstream cancellations.

Run standalone: ``python -m barp_sidecar.providers.fake_server --port 0 [--latency-ms 5 ...]``; it prints
one JSON line ``{"event": "fake_provider_started", "port": N, "base_url": ...}`` and serves until
SIGINT/SIGTERM. In-process: ``async with FakeProvider(options) as fake: fake.base_url``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from barp_sidecar.tasks import wait_event

MALFORMED_MODES = ("json", "sse", "truncated", "body")


@dataclass(frozen=True)
class FakeBehaviour:
    """How the fake answers one request."""

    # HTTP status; anything but 200 sends a JSON error body.
    status: int = 200
    # Retry-After header value sent with a non-200 status (e.g. "1" or an HTTP-date); None = no header.
    retry_after: str | None = None
    # Delay before the response headers (milliseconds).
    latency_ms: float = 0.0
    # Tokens generated per completion (capped by the request's max_tokens).
    tokens: int = 8
    # Delay between streamed tokens (milliseconds); 0 = as fast as possible.
    token_interval_ms: float = 0.0
    # Never answer: wait until the client goes away (counted in stats.cancelled).
    hang: bool = False
    # Stream this many tokens, then hang (a provider that stalls mid-answer).
    hang_after_tokens: int | None = None
    # "json": a data line that is not JSON; "sse": bytes that are not UTF-8; "truncated": the stream stops
    # after the tokens without finish_reason/[DONE]; "body": a 200 application/json body that is not JSON.
    malformed: str | None = None
    # Include token usage (OpenAI: when stream_options.include_usage asks; Anthropic: always).
    usage: bool = True
    # Put the request's Authorization / x-api-key header value into the error body (redaction tests).
    echo_credentials: bool = False
    # Answer ``status`` with a pydantic/FastAPI-style validation body that echoes the request's messages
    # (the prompt) as ``input``, as many OpenAI-compatible servers do for a 422 (privacy tests).
    echo_request: bool = False

    def __post_init__(self) -> None:
        if self.malformed is not None and self.malformed not in MALFORMED_MODES:
            raise ValueError(f"malformed must be one of {MALFORMED_MODES}, not {self.malformed!r}")
        if self.tokens < 0 or self.latency_ms < 0 or self.token_interval_ms < 0:
            raise ValueError("tokens, latency_ms and token_interval_ms must be >= 0")


@dataclass(frozen=True)
class FakeProviderOptions:
    default: FakeBehaviour = FakeBehaviour()
    # Fraction of requests (after the scripted ones and the 429 burst) answered with HTTP 500.
    error_rate: float = 0.0
    # The first N unscripted requests get HTTP 429 with Retry-After: retry_after_s.
    burst_429: int = 0
    retry_after_s: float = 1.0
    seed: int = 0


@dataclass
class FakeProviderStats:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    completed: int = 0
    # Requests whose client went away before the fake finished answering.
    cancelled: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    # The JSON bodies received, most recent last (bounded).
    bodies: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=256))


FAKE_TOOL_ARGUMENTS = '{"query": "fake"}'
FAKE_TOOL_CALL_ID = "call_fake_0"


def _tool_to_call(body: dict[str, Any], style: str) -> str | None:
    """The tool the fake calls for this request, or None (no tools, or the last turn is a tool result)."""
    tools = body.get("tools")
    messages = body.get("messages") or [{}]
    if not isinstance(tools, list) or not tools or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    if last.get("role") == "tool":
        return None
    if isinstance(last.get("content"), list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in last["content"]
    ):
        return None
    choice = body.get("tool_choice")
    if style == "openai":
        if isinstance(choice, dict):
            return str(choice.get("function", {}).get("name"))
        return str(tools[0].get("function", {}).get("name"))
    if isinstance(choice, dict) and choice.get("type") == "tool":
        return str(choice.get("name"))
    return str(tools[0].get("name"))


def _token(index: int) -> str:
    return f"tok{index} "


def _prompt_tokens(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    return sum(len(str(m.get("content", "")).split()) + 4 for m in messages if isinstance(m, dict))


class FakeProvider:
    def __init__(
        self, options: FakeProviderOptions | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("the fake provider binds loopback only")
        self._options = options or FakeProviderOptions()
        self._host = host
        self._requested_port = port
        self._rng = random.Random(self._options.seed)
        self._script: deque[FakeBehaviour] = deque()
        self._burst_left = self._options.burst_429
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self.stats = FakeProviderStats()
        self._idle = asyncio.Event()

    # lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> FakeProvider:
        app = web.Application(client_max_size=16 << 20)
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_get("/healthz", self._health)
        # handler_cancellation: a hanging handler learns that its client went away (counted as cancelled).
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._requested_port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])  # port 0 = chosen by the OS
        self._idle.set()
        return self

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeProvider:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeProvider not started")
        return self._port

    @property
    def base_url(self) -> str:
        """Base URL in the catalog's convention (with the /v1 prefix)."""
        return f"http://{self._host}:{self.port}/v1"

    # scripting -----------------------------------------------------------------------------------------
    def push(self, *behaviours: FakeBehaviour) -> None:
        """Answer the next requests with these behaviours, in order, before any other rule applies."""
        self._script.extend(behaviours)

    async def wait_idle(self, timeout_s: float = 5.0) -> None:
        """Wait until no request is in flight (e.g. until a cancelled upstream call has been noticed)."""
        if not await wait_event(self._idle, timeout_s):
            raise TimeoutError(f"requests still in flight after {timeout_s} s")

    def _next_behaviour(self) -> FakeBehaviour:
        if self._script:
            return self._script.popleft()
        options = self._options
        if self._burst_left > 0:
            self._burst_left -= 1
            return dataclasses.replace(options.default, status=429, retry_after=f"{options.retry_after_s:g}")
        if options.error_rate > 0 and self._rng.random() < options.error_rate:
            return dataclasses.replace(options.default, status=500)
        return options.default

    # handlers ------------------------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "openai")

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "anthropic")

    async def _handle(self, request: web.Request, style: str) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        self._idle.clear()
        status = 0
        try:
            behaviour = self._next_behaviour()
            response = await self._answer(request, style, behaviour)
            status = response.status
            stats.completed += 1
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            stats.cancelled += 1
            raise
        finally:
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            stats.in_flight -= 1
            if stats.in_flight == 0:
                self._idle.set()

    async def _answer(self, request: web.Request, style: str, behaviour: FakeBehaviour) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "invalid_request_error", "body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("model"):
            return _error(400, "invalid_request_error", "model and messages are required")
        self.stats.bodies.append(body)
        if behaviour.latency_ms > 0:
            await asyncio.sleep(behaviour.latency_ms / 1000.0)
        if behaviour.hang:
            await asyncio.sleep(3600)
        if behaviour.status != 200:
            message = f"fake failure {behaviour.status}"
            if behaviour.echo_credentials:
                credential = request.headers.get("Authorization") or request.headers.get("x-api-key", "")
                message = f"Incorrect API key provided: {credential}"
            failure = _error(behaviour.status, "fake_error", message)
            if behaviour.echo_request:
                failure = web.json_response(
                    {
                        "detail": [
                            {
                                "type": "string_too_long",
                                "loc": ["body", "messages", 0, "content"],
                                "msg": f"String should have at most 10 characters: {body['messages']}",
                                "input": body["messages"],
                            }
                        ]
                    },
                    status=behaviour.status,
                )
            if behaviour.retry_after is not None:
                failure.headers["Retry-After"] = behaviour.retry_after
            return failure
        max_tokens = body.get("max_tokens") or behaviour.tokens
        count = min(behaviour.tokens, int(max_tokens))
        finish = "length" if count < behaviour.tokens else "stop"
        input_tokens = _prompt_tokens(body["messages"])
        if behaviour.malformed == "body":
            return web.Response(status=200, body=b"{not json", content_type="application/json")
        if not body.get("stream"):
            return self._non_streamed(style, body, behaviour, count, finish, input_tokens)
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        if style == "openai":
            await self._stream_openai(response, body, behaviour, count, finish, input_tokens)
        else:
            await self._stream_anthropic(response, body, behaviour, count, finish, input_tokens)
        await response.write_eof()
        return response

    def _non_streamed(
        self,
        style: str,
        body: dict[str, Any],
        behaviour: FakeBehaviour,
        count: int,
        finish: str,
        input_tokens: int,
    ) -> web.Response:
        text = "".join(_token(i) for i in range(count))
        tool = _tool_to_call(body, style)
        if style == "openai":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if tool is not None:
                message = {"role": "assistant", "content": None, "tool_calls": [_openai_call(tool)]}
                finish = "tool_calls"
            payload: dict[str, Any] = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            }
            if behaviour.usage:
                payload["usage"] = {"prompt_tokens": input_tokens, "completion_tokens": count}
        else:
            payload = {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn" if finish == "stop" else "max_tokens",
            }
            if tool is not None:
                block = {"type": "tool_use", "id": FAKE_TOOL_CALL_ID, "name": tool}
                payload["content"] = [{**block, "input": json.loads(FAKE_TOOL_ARGUMENTS)}]
                payload["stop_reason"] = "tool_use"
            if behaviour.usage:
                payload["usage"] = {"input_tokens": input_tokens, "output_tokens": count}
        return web.json_response(payload)

    async def _tokens(
        self, response: web.StreamResponse, behaviour: FakeBehaviour, count: int, frame: Any
    ) -> None:
        for index in range(count):
            if behaviour.hang_after_tokens is not None and index == behaviour.hang_after_tokens:
                await asyncio.sleep(3600)
            if index and behaviour.token_interval_ms > 0:
                await asyncio.sleep(behaviour.token_interval_ms / 1000.0)
            await response.write(frame(_token(index)))

    async def _stream_openai(
        self,
        response: web.StreamResponse,
        body: dict[str, Any],
        behaviour: FakeBehaviour,
        count: int,
        finish: str,
        input_tokens: int,
    ) -> None:
        model = body["model"]

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            payload = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        await response.write(chunk({"role": "assistant", "content": ""}))
        if behaviour.malformed == "json":
            await response.write(b'data: {"choices": [\n\n')
            return
        if behaviour.malformed == "sse":
            await response.write(b"data: \xff\xfe\xfd\n\n")
            return
        tool = _tool_to_call(body, "openai")
        if tool is not None:
            call = _openai_call(tool, "")
            await response.write(chunk({"tool_calls": [{"index": 0, **call}]}))
            for piece in _halves(FAKE_TOOL_ARGUMENTS):
                await response.write(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
            finish = "tool_calls"
        else:
            await self._tokens(response, behaviour, count, lambda text: chunk({"content": text}))
        if behaviour.malformed == "truncated":
            return
        await response.write(chunk({}, finish))
        options = body.get("stream_options") or {}
        if behaviour.usage and options.get("include_usage"):
            usage = {
                "prompt_tokens": input_tokens,
                "completion_tokens": count,
                "total_tokens": input_tokens + count,
            }
            payload = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "choices": [],
                "usage": usage,
            }
            await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")

    async def _stream_anthropic(
        self,
        response: web.StreamResponse,
        body: dict[str, Any],
        behaviour: FakeBehaviour,
        count: int,
        finish: str,
        input_tokens: int,
    ) -> None:
        def event(kind: str, payload: dict[str, Any]) -> bytes:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload})}\n\n".encode()

        usage = {"input_tokens": input_tokens, "output_tokens": 1} if behaviour.usage else {}
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [],
        }
        if usage:
            message["usage"] = usage
        await response.write(event("message_start", {"message": message}))
        await response.write(
            event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        )
        await response.write(event("ping", {}))
        if behaviour.malformed == "json":
            await response.write(b"event: content_block_delta\ndata: {oops\n\n")
            return
        if behaviour.malformed == "sse":
            await response.write(b"data: \xff\xfe\xfd\n\n")
            return
        await self._tokens(
            response,
            behaviour,
            count,
            lambda text: event(
                "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}}
            ),
        )
        if behaviour.malformed == "truncated":
            return
        await response.write(event("content_block_stop", {"index": 0}))
        stop_reason = "end_turn" if finish == "stop" else "max_tokens"
        tool = _tool_to_call(body, "anthropic")
        if tool is not None:
            block = {"type": "tool_use", "id": FAKE_TOOL_CALL_ID, "name": tool, "input": {}}
            await response.write(event("content_block_start", {"index": 1, "content_block": block}))
            for piece in _halves(FAKE_TOOL_ARGUMENTS):
                json_delta = {"type": "input_json_delta", "partial_json": piece}
                await response.write(event("content_block_delta", {"index": 1, "delta": json_delta}))
            await response.write(event("content_block_stop", {"index": 1}))
            stop_reason = "tool_use"
        delta: dict[str, Any] = {"delta": {"stop_reason": stop_reason}}
        if behaviour.usage:
            delta["usage"] = {"output_tokens": count}
        await response.write(event("message_delta", delta))
        await response.write(event("message_stop", {}))


def _openai_call(name: str, arguments: str = FAKE_TOOL_ARGUMENTS) -> dict[str, Any]:
    return {"id": FAKE_TOOL_CALL_ID, "type": "function", "function": {"name": name, "arguments": arguments}}


def _halves(text: str) -> tuple[str, str]:
    return text[: len(text) // 2], text[len(text) // 2 :]


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


# command line ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m barp_sidecar.providers.fake_server",
        description="Fake OpenAI-compatible (and Anthropic Messages) LLM provider on 127.0.0.1",
    )
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port (printed)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before the response headers")
    parser.add_argument("--tokens", type=int, default=8, help="tokens per completion")
    parser.add_argument("--tokens-per-s", type=float, default=0.0, help="streaming rate; 0 = unthrottled")
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="fraction of requests answered with 500"
    )
    parser.add_argument("--burst-429", type=int, default=0, help="the first N requests get 429")
    parser.add_argument("--retry-after-s", type=float, default=1.0, help="Retry-After sent with the 429s")
    parser.add_argument("--hang", action="store_true", help="never answer")
    parser.add_argument("--malformed", choices=MALFORMED_MODES, default=None)
    parser.add_argument("--no-usage", action="store_true", help="omit token usage")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def options_from_args(args: argparse.Namespace) -> FakeProviderOptions:
    if not 0.0 <= args.error_rate <= 1.0:
        raise ValueError("--error-rate must be in [0, 1]")
    if args.tokens_per_s < 0:
        raise ValueError("--tokens-per-s must be >= 0")
    behaviour = FakeBehaviour(
        latency_ms=args.latency_ms,
        tokens=args.tokens,
        token_interval_ms=1000.0 / args.tokens_per_s if args.tokens_per_s > 0 else 0.0,
        hang=args.hang,
        malformed=args.malformed,
        usage=not args.no_usage,
    )
    return FakeProviderOptions(
        default=behaviour,
        error_rate=args.error_rate,
        burst_429=args.burst_429,
        retry_after_s=args.retry_after_s,
        seed=args.seed,
    )


async def _serve(options: FakeProviderOptions, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with FakeProvider(options, port=port) as fake:
        line = {
            "event": "fake_provider_started",
            "port": fake.port,
            "base_url": fake.base_url,
            "at_unix_s": time.time(),
        }
        print(json.dumps(line), flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(options, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
