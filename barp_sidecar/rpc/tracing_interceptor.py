"""A grpc.aio server interceptor that runs every Router RPC inside a SERVER span.

Owns only the span around the handler: the parent comes from the call's ``traceparent`` metadata (W3C),
the span is current while the handler runs (routing and forwarding spans nest under it, log lines carry
its ``trace_id``), and it ends with the RPC's status code. Installed only when tracing is on; health and
reflection calls are not traced.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.trace import Tracer

from barp_sidecar.rpc.status import status_for, status_message
from barp_sidecar.tracing import extract_context, grpc_metadata_carrier, server_span, set_error

TRACED_PREFIX = "/barp.v1.Router/"


def _finish(span: Any, context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
    """The span ends with the status the caller gets: set on the context, or (a handler's exception, which
    the error boundary outside this interceptor turns into the status) the one the boundary will set."""
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        name, details = status_for(error).name, status_message(error)
    else:
        code = context.code()
        name = code.name if isinstance(code, grpc.StatusCode) else "OK"
        details = context.details() or ""
    span.set_attribute("rpc.grpc.status_code", name)
    if name != "OK":
        set_error(span, name, details)


class TracingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(TRACED_PREFIX):
            return handler
        name = method[1:]  # "barp.v1.Router/Route", the OpenTelemetry RPC span name
        attributes = {"rpc.system": "grpc", "rpc.method": method.rsplit("/", 1)[1]}
        tracer = self._tracer

        if handler.unary_unary is not None:
            behaviour = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                parent = extract_context(grpc_metadata_carrier(context.invocation_metadata()))
                with server_span(tracer, name, parent, attributes) as span:
                    error: BaseException | None = None
                    try:
                        return await behaviour(request, context)
                    except Exception as raised:
                        error = raised
                        raise
                    finally:
                        _finish(span, context, error)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            stream_behaviour = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                parent = extract_context(grpc_metadata_carrier(context.invocation_metadata()))
                with server_span(tracer, name, parent, attributes) as span:
                    error: BaseException | None = None
                    try:
                        async for response in stream_behaviour(request, context):
                            yield response
                    except Exception as raised:
                        error = raised
                        raise
                    finally:
                        _finish(span, context, error)

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
