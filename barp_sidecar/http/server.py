"""The OpenAI-compatible HTTP server (aiohttp): a thin transport over ``CompletionService``.

Owns HTTP concerns only: binding (``http.host``/``http.port``), caller keys (SHA-256 digests in settings),
body limits, turning ``CompletionService`` events into OpenAI JSON or server-sent events, errors in
OpenAI's shape with their HTTP status, the access log and request metrics. Routing, forwarding, fallback,
cost and the reward path are the same objects gRPC ``Complete`` and ``ReportOutcome`` use.

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/feedback``
(quality for a decision id, as ``ReportOutcome``), ``GET /healthz`` (no key needed). A client that goes
away mid-answer cancels its handler (``handler_cancellation``), which closes the service's generator and
with it the upstream provider response. Shutdown: stop accepting, in-flight requests get ``grace_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import Span, Tracer

from barp_sidecar.errors import BarpError, ConfigError, FailedPrecondition, InvalidArgument
from barp_sidecar.http.openai_request import (
    ChatCompletionCall,
    ModelNames,
    ModelNotFound,
    parse_chat_completion,
)
from barp_sidecar.http.openai_response import (
    ChunkEncoder,
    CompletionAssembler,
    HttpError,
    http_error,
)
from barp_sidecar.metrics import SidecarMetrics
from barp_sidecar.providers.forwarder import AnswerStarted, Completed, TextDelta, ToolCallsDelta
from barp_sidecar.rewards.recorder import OutcomeRecorder
from barp_sidecar.routing.completion import CompletionService
from barp_sidecar.settings import HttpSettings
from barp_sidecar.tracing import extract_context, server_span, set_error

log = structlog.get_logger("barp_sidecar.access")

DECISION_ID_HEADER = "x-barp-decision-id"
ROUTED_MODEL_HEADER = "x-barp-routed-model"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def key_digest(key: str) -> str:
    """The SHA-256 hex digest that ``http.api_key_sha256`` lists for an accepted key."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class _AccessRecord:
    """What the access log line and the metrics say about one request."""

    status: int = 499  # client closed the request, until something else is known
    decision_id: str | None = None
    model: str | None = None
    routed_model: str | None = None
    fallback_from: tuple[str, ...] = ()
    stream: bool | None = None
    error: str | None = None
    messages: list[str] | None = None


def _json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers
    )


def _error_response(error: HttpError) -> web.Response:
    return _json_response(error.status, error.body())


class OpenAIHttpServer:
    def __init__(
        self,
        settings: HttpSettings,
        completion: CompletionService,
        metrics: SidecarMetrics,
        *,
        outcomes: OutcomeRecorder | None,
        grace_s: float,
        log_prompts: bool = False,
        tracer: Tracer | None = None,
    ) -> None:
        self._settings = settings
        self._completion = completion
        self._metrics = metrics
        self._outcomes = outcomes
        self._grace_s = grace_s
        self._log_prompts = log_prompts
        # None = tracing off: no span, no trace context read from the headers.
        self._tracer = tracer
        self._digests = settings.api_key_digests()
        self._names = ModelNames(settings.routed_model, tuple(sorted(completion.callable_models)))
        self._runner: web.AppRunner | None = None
        self._serving = False
        self.port: int | None = None

    def _application(self) -> web.Application:
        app = web.Application(client_max_size=self._settings.max_body_bytes, middlewares=[self._errors])
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_post("/v1/feedback", self._feedback)
        app.router.add_get("/healthz", self._health)
        return app

    async def start(self) -> int:
        """Bind and serve; returns the bound port. ConfigError (naming http.port) when it cannot bind."""
        runner = web.AppRunner(
            self._application(), handler_cancellation=True, access_log=None, shutdown_timeout=self._grace_s
        )
        await runner.setup()
        site = web.TCPSite(runner, self._settings.host, self._settings.port, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                "http.port", f"cannot bind {self._settings.host}:{self._settings.port} ({exc})"
            ) from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self._serving = True
        return self.port

    async def close(self) -> None:
        """Stop accepting; in-flight requests get ``grace_s`` to finish, then are cancelled. Idempotent."""
        self._serving = False
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # middleware ------------------------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Caller keys, and aiohttp's own refusals (404, 405, 413) in OpenAI's error shape."""
        if request.path.startswith("/v1/") and self._digests and not self._authorized(request):
            return _error_response(
                HttpError(
                    401, "Incorrect or missing API key (Authorization: Bearer ...)", code="invalid_api_key"
                )
            )
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            limit = self._settings.max_body_bytes
            return _error_response(
                HttpError(413, f"request body larger than {limit} bytes (http.max_body_bytes)")
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error_response(HttpError(exc.status, f"{request.method} {request.path}: {exc.reason}"))

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        digest = key_digest(key.strip())
        return any(hmac.compare_digest(digest, accepted) for accepted in self._digests)

    # routes ----------------------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        status = "SERVING" if self._serving else "NOT_SERVING"
        return _json_response(200 if self._serving else 503, {"status": status})

    def _model_object(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "barp-sidecar"}

    async def _models(self, request: web.Request) -> web.Response:
        names = [self._names.routed, *self._names.enabled]
        return _json_response(200, {"object": "list", "data": [self._model_object(n) for n in names]})

    async def _model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name != self._names.routed and name not in self._names.enabled:
            return _error_response(http_error(ModelNotFound(name)))
        return _json_response(200, self._model_object(name))

    async def _json_body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidArgument("body", f"could not parse the JSON body of your request ({exc})") from None

    async def _feedback(self, request: web.Request) -> web.StreamResponse:
        return await self._endpoint("Feedback", request, self._record_feedback)

    async def _record_feedback(self, request: web.Request, record: _AccessRecord) -> web.StreamResponse:
        body = await self._json_body(request)
        if not isinstance(body, dict):
            raise InvalidArgument("body", "must be a JSON object")
        unknown = sorted(set(body) - {"decision_id", "quality", "cost_usd"})
        if unknown:
            raise InvalidArgument(unknown[0], "Unrecognized request argument supplied")
        decision_id, quality, cost = (
            body.get("decision_id"),
            body.get("quality"),
            body.get("cost_usd"),
        )
        if not isinstance(decision_id, str):
            raise InvalidArgument("decision_id", "is required (a string)")
        record.decision_id = decision_id[:64]
        if isinstance(quality, bool) or not isinstance(quality, int | float):
            raise InvalidArgument("quality", "is required (a number in [0, 1])")
        if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float)):
            raise InvalidArgument("cost_usd", "must be a number")
        if self._outcomes is None:
            raise FailedPrecondition("rewards.enabled is false: this sidecar does not record outcomes")
        recorded = await self._outcomes.report(decision_id, float(quality), cost)
        record.status = 200
        return _json_response(200, {"object": "feedback", "decision_id": decision_id, "recorded": recorded})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._endpoint("ChatCompletions", request, self._chat_completion)

    async def _chat_completion(self, request: web.Request, record: _AccessRecord) -> web.StreamResponse:
        body = await self._json_body(request)
        call = parse_chat_completion(body, {k.lower(): v for k, v in request.headers.items()}, self._names)
        record.stream = call.stream
        if self._log_prompts:
            record.messages = [m.content for m in call.command.chat.messages]
        return await self._answer(request, call, record)

    async def _endpoint(
        self,
        method: str,
        request: web.Request,
        handle: Callable[[web.Request, _AccessRecord], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """One POST endpoint inside its span and access line; errors answered in OpenAI's shape."""
        with self._span(method, request):
            started_s = time.monotonic()
            record = _AccessRecord()
            try:
                return await handle(request, record)
            except BarpError as error:
                failure = http_error(error)
                record.status, record.error = failure.status, failure.message
                return _error_response(failure)
            except web.HTTPException as exc:  # aiohttp's own refusal (413): the middleware shapes it
                record.status, record.error = exc.status, exc.reason
                raise
            except Exception as error:  # a bug: a 500 in OpenAI's shape, the traceback in the log
                log.exception("http_internal_error", path=request.path)
                failure = http_error(error)
                record.status, record.error = failure.status, failure.message
                return _error_response(failure)
            finally:
                self._access(method, request, record, started_s)

    async def _answer(
        self, request: web.Request, call: ChatCompletionCall, record: _AccessRecord
    ) -> web.StreamResponse:
        events = self._completion.complete(call.command)
        async with contextlib.aclosing(events):
            # Errors before the first event (bad field, routing, every provider failed) are plain JSON
            # errors with their status; AnswerStarted always comes first otherwise.
            started = await anext(events)
            assert isinstance(started, AnswerStarted)
            decision = started.decision
            record.decision_id, record.model, record.routed_model = (
                decision.decision_id,
                started.model,
                decision.model,
            )
            record.fallback_from = started.fallback_from
            completion_id = f"chatcmpl-{decision.decision_id}"
            headers = {DECISION_ID_HEADER: decision.decision_id, ROUTED_MODEL_HEADER: decision.model}
            if call.command.request_id:
                headers["x-request-id"] = call.command.request_id
            created_s = int(time.time())
            if not call.stream:
                assembler = CompletionAssembler(completion_id, created_s, started)
                async for event in events:
                    if isinstance(event, TextDelta):
                        assembler.text.append(event.text)
                    elif isinstance(event, ToolCallsDelta):
                        assembler.tools.add(event.calls)
                    elif isinstance(event, Completed):
                        record.status, record.fallback_from = 200, event.fallback_from
                        return _json_response(200, assembler.body(event), headers)
                raise RuntimeError("the completion ended without a Completed event")
            return await self._stream(request, call, started, events, headers, created_s, record)

    async def _stream(
        self,
        request: web.Request,
        call: ChatCompletionCall,
        started: AnswerStarted,
        events: Any,
        headers: dict[str, str],
        created_s: int,
        record: _AccessRecord,
    ) -> web.StreamResponse:
        encoder = ChunkEncoder(
            f"chatcmpl-{started.decision.decision_id}", created_s, started.model, call.include_usage
        )
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers},
        )
        await response.prepare(request)
        record.status = 200
        # Events are written as they come, except that the role chunk waits for the first content and
        # text that ended the answer waits for the finish chunk right behind it: a short answer that
        # arrived at once is one write (one TCP segment) instead of four. The first token is not delayed.
        held = encoder.first(started)
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    held += encoder.text(event.text)
                    if event.final:
                        continue
                elif isinstance(event, ToolCallsDelta):
                    held += encoder.tool_calls(event.calls)
                elif isinstance(event, Completed):
                    record.fallback_from = event.fallback_from
                    held += encoder.last(event)
                await response.write(held)
                held = b""
        except asyncio.CancelledError:
            record.status = 499  # the client went away; the provider call is closed with the generator
            raise
        except Exception as error:
            # The status line is sent: OpenAI reports a mid-stream failure as an error event, no [DONE].
            if not isinstance(error, BarpError):
                log.exception("http_internal_error", path=request.path)
            failure = http_error(error)
            record.error = failure.message
            await response.write(held + failure.event())
        await response.write_eof()
        return response

    def _span(self, method: str, request: web.Request) -> contextlib.AbstractContextManager[Span | None]:
        """The request's SERVER span (parent from its ``traceparent`` header), current for the handler."""
        if self._tracer is None:
            return contextlib.nullcontext()
        attributes = {"http.request.method": request.method, "url.path": request.path, "barp.method": method}
        name = f"{request.method} {request.path}"
        return server_span(self._tracer, name, extract_context(request.headers), attributes)

    def _access(self, method: str, request: web.Request, record: _AccessRecord, started_s: float) -> None:
        latency_s = time.monotonic() - started_s
        span = trace.get_current_span()
        span.set_attribute("http.response.status_code", record.status)
        if record.decision_id is not None:
            span.set_attributes({"barp.decision_id": record.decision_id, "barp.model": record.model or ""})
        if record.status >= 500:
            set_error(span, str(record.status), record.error or "")
        self._metrics.rpc_done(method, str(record.status), latency_s, record.routed_model)
        fields = {"messages": record.messages} if record.messages is not None else {}
        log.info(
            "http",
            method=method,
            path=request.path,
            status=record.status,
            stream=record.stream,
            decision_id=record.decision_id,
            model=record.model,
            routed_model=record.routed_model,
            fallback_from=list(record.fallback_from) or None,
            latency_ms=round(latency_s * 1000, 3),
            error=record.error,
            **fields,
        )
