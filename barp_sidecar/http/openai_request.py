"""OpenAI chat-completions request bodies (and ``x-barp-*`` headers) -> ``CompleteCommand``. Pure.

Owns what the HTTP API accepts: OpenAI's fields that are passed through, those refused with a clear 400
(OpenAI itself rejects unknown fields the same way), the ``barp`` extension object (``extra_body`` in the
SDKs) and its header equivalents, and which ``model`` names exist. Field semantics (ranges, roles) stay in
``providers.chat.validate_chat_request``, shared with gRPC ``Complete``. Raises ``InvalidArgument`` naming
the field, or ``ModelNotFound``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from barp_sidecar.domain import ExplorationMode
from barp_sidecar.errors import InvalidArgument, NotFound
from barp_sidecar.providers.chat import ChatMessage, ChatRequest, GenerationParameters, ToolCall, ToolSpec
from barp_sidecar.routing.completion import CompleteCommand

# Passed through to the provider (or used here). Everything else OpenAI defines is refused by name.
ACCEPTED_FIELDS = frozenset(
    {
        "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
        "temperature", "top_p", "stop", "seed", "tools", "tool_choice", "response_format", "n", "user",
        "barp",
    }
)  # fmt: skip
UNSUPPORTED_FIELDS = frozenset(
    {
        "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs", "functions",
        "function_call", "parallel_tool_calls", "audio", "modalities", "prediction", "store", "metadata",
        "service_tier", "reasoning_effort", "web_search_options",
    }
)  # fmt: skip
BARP_FIELDS = frozenset({"quality_weight", "allowed_models", "exploration", "request_id"})
MESSAGE_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})
HEADER_QUALITY_WEIGHT = "x-barp-quality-weight"
HEADER_ALLOWED_MODELS = "x-barp-allowed-models"
HEADER_EXPLORATION = "x-barp-exploration"
HEADER_REQUEST_ID = "x-request-id"
MAX_REQUEST_ID_CHARS = 128


class ModelNotFound(NotFound):
    """The body's ``model`` is neither the routed name nor an enabled model (OpenAI: 404 model_not_found)."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model {model!r} does not exist or is not enabled here (GET /v1/models lists them)"
        )
        self.model = model


@dataclass(frozen=True)
class ChatCompletionCall:
    """One parsed request: the command for ``CompletionService`` and how to answer it."""

    command: CompleteCommand
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class ModelNames:
    """The names a request's ``model`` may use: the routed one, or one enabled model (pinned)."""

    routed: str
    enabled: tuple[str, ...]


def _expect(value: Any, kind: type | tuple[type, ...], field: str, what: str) -> Any:
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise InvalidArgument(field, f"must be {what}, not {value!r}")
    if not isinstance(value, kind):
        raise InvalidArgument(field, f"must be {what}, not {type(value).__name__}")
    return value


def _number(value: Any, field: str) -> float:
    number = float(_expect(value, (int, float), field, "a number"))
    if not math.isfinite(number):
        raise InvalidArgument(field, f"must be finite, not {value!r}")
    return number


def _content(value: Any, field: str) -> str:
    """A message's text: a string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    parts = _expect(value, list, field, "a string or a list of text parts")
    texts = []
    for index, part in enumerate(parts):
        part = _expect(part, dict, f"{field}[{index}]", "an object")
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InvalidArgument(f"{field}[{index}].type", "only 'text' parts are supported")
        texts.append(part["text"])
    return "".join(texts)


def _tool_calls(value: Any, field: str) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    calls = []
    for index, raw in enumerate(_expect(value, list, field, "a list")):
        where = f"{field}[{index}]"
        call = _expect(raw, dict, where, "an object")
        function = _expect(call.get("function"), dict, f"{where}.function", "an object")
        calls.append(
            ToolCall(
                id=_expect(call.get("id"), str, f"{where}.id", "a string"),
                name=_expect(function.get("name"), str, f"{where}.function.name", "a string"),
                arguments=_expect(
                    function.get("arguments", ""), str, f"{where}.function.arguments", "a string"
                ),
            )
        )
    return tuple(calls)


def _messages(value: Any) -> tuple[ChatMessage, ...]:
    messages = []
    for index, raw in enumerate(_expect(value, list, "messages", "a list")):
        field = f"messages[{index}]"
        message = _expect(raw, dict, field, "an object")
        unknown = sorted(set(message) - MESSAGE_FIELDS)
        if unknown:
            raise InvalidArgument(f"{field}.{unknown[0]}", "unrecognized message field")
        role = _expect(message.get("role"), str, f"{field}.role", "a string")
        tool_call_id = message.get("tool_call_id")
        messages.append(
            ChatMessage(
                # OpenAI's newer name for system instructions.
                role="system" if role == "developer" else role,
                content=_content(message.get("content"), f"{field}.content"),
                tool_calls=_tool_calls(message.get("tool_calls"), f"{field}.tool_calls"),
                tool_call_id=None
                if tool_call_id is None
                else _expect(tool_call_id, str, f"{field}.tool_call_id", "a string"),
            )
        )
    return tuple(messages)


def _tools(value: Any) -> tuple[ToolSpec, ...]:
    if value is None:
        return ()
    tools = []
    for index, raw in enumerate(_expect(value, list, "tools", "a list")):
        tool = _expect(raw, dict, f"tools[{index}]", "an object")
        if tool.get("type", "function") != "function":
            raise InvalidArgument(f"tools[{index}].type", "only 'function' tools are supported")
        function = _expect(tool.get("function"), dict, f"tools[{index}].function", "an object")
        tools.append(
            ToolSpec(
                name=_expect(function.get("name"), str, f"tools[{index}].function.name", "a string"),
                description=_expect(
                    function.get("description", ""), str, f"tools[{index}].function.description", "a string"
                ),
                parameters=_expect(
                    function.get("parameters", {}), dict, f"tools[{index}].function.parameters", "an object"
                ),
            )
        )
    return tuple(tools)


def _tool_choice(value: Any) -> tuple[str | None, str | None]:
    """(mode, forced tool name) from "auto" | "none" | "required" | {"type": "function", "function": ...}."""
    if value is None or isinstance(value, str):
        return value, None
    choice = _expect(value, dict, "tool_choice", "a string or an object")
    function = _expect(choice.get("function"), dict, "tool_choice.function", "an object")
    return None, _expect(function.get("name"), str, "tool_choice.function.name", "a string")


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    stops = _expect(value, list, "stop", "a string or a list of strings")
    return tuple(_expect(s, str, f"stop[{i}]", "a string") for i, s in enumerate(stops))


def _parameters(body: Mapping[str, Any]) -> GenerationParameters:
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise InvalidArgument("max_completion_tokens", "give max_tokens or max_completion_tokens, not both")
    max_tokens_field = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    max_tokens = body.get(max_tokens_field)
    if max_tokens is not None and _expect(max_tokens, int, max_tokens_field, "an integer") < 1:
        raise InvalidArgument(max_tokens_field, f"must be >= 1, not {max_tokens}")
    seed = body.get("seed")
    response_format = body.get("response_format")
    tool_choice, tool_choice_name = _tool_choice(body.get("tool_choice"))
    return GenerationParameters(
        max_tokens=max_tokens or 0,
        temperature=None if body.get("temperature") is None else _number(body["temperature"], "temperature"),
        top_p=None if body.get("top_p") is None else _number(body["top_p"], "top_p"),
        stop=_stop(body.get("stop")),
        seed=None if seed is None else _expect(seed, int, "seed", "an integer"),
        tools=_tools(body.get("tools")),
        tool_choice=tool_choice,
        tool_choice_name=tool_choice_name,
        response_format=None
        if response_format is None
        else _expect(response_format, dict, "response_format", "an object"),
    )


def _allowed_models(value: Any, field: str) -> tuple[str, ...]:
    if isinstance(value, str):  # the header: comma-separated
        return tuple(name.strip() for name in value.split(",") if name.strip())
    names = _expect(value, list, field, "a list of model names")
    return tuple(_expect(n, str, f"{field}[{i}]", "a string") for i, n in enumerate(names))


def _exploration(value: Any, field: str) -> ExplorationMode:
    try:
        return ExplorationMode(_expect(value, str, field, "a string").lower())
    except ValueError:
        modes = [m.value for m in ExplorationMode]
        raise InvalidArgument(field, f"must be one of {modes}, not {value!r}") from None


def _quality_weight(value: Any, field: str) -> float:
    if isinstance(value, str):  # the header
        try:
            value = float(value)
        except ValueError:
            raise InvalidArgument(field, f"must be a number in [0, 1], not {value!r}") from None
    return _number(value, field)


def _routing_fields(body: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
    """The ``barp`` extension object, falling back to the ``x-barp-*`` headers field by field."""
    extension = _expect(body.get("barp") or {}, dict, "barp", "an object")
    unknown = sorted(set(extension) - BARP_FIELDS)
    if unknown:
        raise InvalidArgument(f"barp.{unknown[0]}", f"unrecognized field (known: {sorted(BARP_FIELDS)})")
    fields: dict[str, Any] = {}
    sources = (
        ("quality_weight", HEADER_QUALITY_WEIGHT, _quality_weight),
        ("allowed_models", HEADER_ALLOWED_MODELS, _allowed_models),
        ("exploration", HEADER_EXPLORATION, _exploration),
    )
    for name, header, convert in sources:
        if extension.get(name) is not None:
            fields[name] = convert(extension[name], f"barp.{name}")
        elif header in headers:
            fields[name] = convert(headers[header], header)
    request_id = extension.get("request_id") or headers.get(HEADER_REQUEST_ID) or ""
    request_id = _expect(request_id, str, "barp.request_id", "a string")
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument("barp.request_id", f"at most {MAX_REQUEST_ID_CHARS} characters")
    fields["request_id"] = request_id
    return fields


def _pin_model(model: str, allowed: tuple[str, ...], names: ModelNames) -> tuple[str, ...]:
    """The allowed-models mask for ``model``: unchanged for the routed name, just that model otherwise."""
    if model == names.routed:
        return allowed
    if model not in names.enabled:
        raise ModelNotFound(model)
    if allowed and model not in allowed:
        raise InvalidArgument("model", f"{model!r} is not among barp.allowed_models {list(allowed)}")
    return (model,)


def parse_chat_completion(
    body: Any, headers: Mapping[str, str], names: ModelNames, deadline_monotonic_s: float | None = None
) -> ChatCompletionCall:
    """Validate one ``POST /v1/chat/completions`` body; ``headers`` keys are lower-case."""
    body = _expect(body, dict, "body", "a JSON object")
    for name in sorted(body):
        if name in UNSUPPORTED_FIELDS:
            raise InvalidArgument(name, "is not supported by barp-sidecar")
        if name not in ACCEPTED_FIELDS:
            raise InvalidArgument(name, "Unrecognized request argument supplied")
    model = _expect(body.get("model"), str, "model", "a string")
    if body.get("messages") is None:
        raise InvalidArgument("messages", "is required")
    n = body.get("n")
    if n is not None and _expect(n, int, "n", "an integer") != 1:
        raise InvalidArgument("n", f"only n=1 is supported, not {n}")
    stream = bool(_expect(body.get("stream", False) or False, bool, "stream", "a boolean"))
    options = _expect(body.get("stream_options") or {}, dict, "stream_options", "an object")
    if options and not stream:
        raise InvalidArgument("stream_options", "is only allowed when stream is true")
    unknown = sorted(set(options) - {"include_usage"})
    if unknown:
        raise InvalidArgument(f"stream_options.{unknown[0]}", "unrecognized field (known: include_usage)")
    include_usage = bool(
        _expect(options.get("include_usage", False), bool, "stream_options.include_usage", "a boolean")
    )
    # Accepted and not forwarded (like Route's metadata): OpenAI's end-user id for abuse monitoring.
    if body.get("user") is not None:
        _expect(body["user"], str, "user", "a string")
    routing = _routing_fields(body, headers)
    allowed = _pin_model(model, routing.get("allowed_models", ()), names)
    command = CompleteCommand(
        chat=ChatRequest(messages=_messages(body["messages"]), parameters=_parameters(body)),
        quality_weight=routing.get("quality_weight"),
        allowed_models=allowed,
        exploration=routing.get("exploration"),
        request_id=routing["request_id"],
        deadline_monotonic_s=deadline_monotonic_s,
    )
    return ChatCompletionCall(command=command, stream=stream, include_usage=include_usage)
