"""The one error boundary of every gRPC server in this project (Router, Admin, Trainer, health, reflection).

Owns two things, applied by one server interceptor (``ErrorBoundary``) to every method handler:

- Request decoding that never fails before project code: the stock deserializer raises protobuf's
  ``DecodeError`` (invalid UTF-8 in a string field, garbage bytes), which gRPC answers with UNKNOWN. The
  boundary's deserializer turns it into a ``MalformedRequest`` naming the field path it found
  (``messages[1].content``), answered INVALID_ARGUMENT. For client streams the error surfaces when the
  servicer reads the bad message.
- Exceptions to statuses: whatever a servicer raises becomes the status of ``rpc.status`` (one table),
  with ``google.rpc.Status`` details; an unexpected exception is INTERNAL (logged with its traceback),
  never UNKNOWN. A servicer's own ``context.abort`` passes through untouched.

Servicers therefore raise domain errors (``barp_sidecar.errors``) and never map codes themselves. Unary
responses set the status without raising (cheaper on a refusal path under load than ``abort``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf import descriptor as descriptor_lib
from google.protobuf.message import DecodeError

from barp_sidecar.errors import MalformedRequest
from barp_sidecar.rpc.status import rich_status_for, rule_for

log = structlog.get_logger("barp_sidecar.rpc.boundary")

_WIRE_VARINT, _WIRE_FIXED64, _WIRE_LENGTH, _WIRE_FIXED32 = 0, 1, 2, 5
# Nested messages deeper than this are not searched for the bad field (the error still names the message).
_MAX_SEARCH_DEPTH = 16


@dataclass(frozen=True)
class UndecodableRequest:
    """What the boundary's deserializer returns instead of raising; the handler raises ``error``."""

    error: MalformedRequest


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[position]  # IndexError on a truncated varint: the caller gives up the search
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def invalid_utf8_field(data: bytes, descriptor: descriptor_lib.Descriptor, depth: int = 0) -> str | None:
    """The path of the first string field in ``data`` that is not valid UTF-8 (``messages[1].content``,
    ``metadata.value``), or None when none is found. Walks the wire format with the message's descriptor;
    never raises."""
    if depth > _MAX_SEARCH_DEPTH:
        return None
    counts: dict[int, int] = {}
    position = 0
    try:
        while position < len(data):
            key, position = _varint(data, position)
            number, wire_type = key >> 3, key & 7
            if wire_type == _WIRE_VARINT:
                _, position = _varint(data, position)
            elif wire_type == _WIRE_FIXED64:
                position += 8
            elif wire_type == _WIRE_FIXED32:
                position += 4
            elif wire_type == _WIRE_LENGTH:
                length, position = _varint(data, position)
                chunk = data[position : position + length]
                position += length
                field = descriptor.fields_by_number.get(number)
                if field is None:
                    continue
                index = counts.get(number, 0)
                counts[number] = index + 1
                is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
                name = field.name + (f"[{index}]" if field.is_repeated and not is_map else "")
                if field.type == descriptor_lib.FieldDescriptor.TYPE_STRING:
                    try:
                        chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        return name
                elif field.type == descriptor_lib.FieldDescriptor.TYPE_MESSAGE:
                    inner = invalid_utf8_field(chunk, field.message_type, depth + 1)
                    if inner is not None:
                        return f"{name}.{inner}"
            else:
                return None  # groups or a corrupt key: stop searching
    except (IndexError, ValueError):
        return None
    return None


def malformed_request(data: bytes, message_type: Any) -> MalformedRequest:
    """The error for request bytes that failed to decode as ``message_type``."""
    descriptor = getattr(message_type, "DESCRIPTOR", None)
    name = descriptor.full_name if descriptor is not None else "the request message"
    path = invalid_utf8_field(data, descriptor) if descriptor is not None else None
    if path is not None:
        return MalformedRequest(path, "is not valid UTF-8 (string fields must be UTF-8)")
    return MalformedRequest("request", f"the bytes are not a valid {name} message")


def tolerant_deserializer(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserializer`` that returns an ``UndecodableRequest`` instead of raising ``DecodeError``."""
    message_type = getattr(deserializer, "__self__", None)

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return UndecodableRequest(malformed_request(data, message_type))

    return deserialize


def _log_failure(method: str, error: BaseException) -> None:
    rule = rule_for(error)
    if rule is None:
        log.error("rpc_internal_error", method=method, error_type=type(error).__name__, exc_info=error)
    elif isinstance(error, MalformedRequest):
        # No servicer saw this call, so no access line was written for it.
        log.info("rpc_rejected", method=method, code=rule.code.name, reason=rule.reason, error=str(error))


def _set_status(context: grpc.aio.ServicerContext, method: str, error: BaseException) -> None:
    _log_failure(method, error)
    status = rich_status_for(error)
    context.set_code(status.code)
    context.set_details(status.details)
    context.set_trailing_metadata(status.trailing_metadata)


async def _abort(context: grpc.aio.ServicerContext, method: str, error: BaseException) -> None:
    _log_failure(method, error)
    status = rich_status_for(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, UndecodableRequest):
            raise request.error
        yield request


def _unary_behavior(behavior: Callable[..., Any], method: str, request_streaming: bool) -> Any:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if request_streaming:
                request = _checked(request)
            elif isinstance(request, UndecodableRequest):
                raise request.error
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            _set_status(context, method, error)
            return None

    return call


def _streaming_behavior(behavior: Callable[..., Any], method: str, request_streaming: bool) -> Any:
    if not inspect.isasyncgenfunction(behavior):
        # A streaming handler written as a coroutine that uses ``context.write``.
        async def write_call(request: Any, context: grpc.aio.ServicerContext) -> None:
            try:
                if request_streaming:
                    request = _checked(request)
                elif isinstance(request, UndecodableRequest):
                    raise request.error
                await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await _abort(context, method, error)

        return write_call

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            if request_streaming:
                request = _checked(request)
            elif isinstance(request, UndecodableRequest):
                raise request.error
            async with contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, method, error)

    return stream


def guarded_handler(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """``handler`` with the boundary's deserializer and exception mapping around its behaviour."""
    replaced: dict[str, Any] = {}
    if handler.request_deserializer is not None:
        replaced["request_deserializer"] = tolerant_deserializer(handler.request_deserializer)
    streaming_in = handler.request_streaming
    if handler.unary_unary is not None:
        replaced["unary_unary"] = _unary_behavior(handler.unary_unary, method, False)
    elif handler.stream_unary is not None:
        replaced["stream_unary"] = _unary_behavior(handler.stream_unary, method, True)
    elif handler.unary_stream is not None:
        replaced["unary_stream"] = _streaming_behavior(handler.unary_stream, method, False)
    elif handler.stream_stream is not None:
        replaced["stream_stream"] = _streaming_behavior(handler.stream_stream, method, streaming_in)
    return handler._replace(**replaced)


class ErrorBoundary(grpc.aio.ServerInterceptor):
    """Applies ``guarded_handler`` to every call. Put it first, so it also guards later interceptors'
    handlers (the Admin token check raises ``Unauthenticated`` through it)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return guarded_handler(handler, handler_call_details.method)
