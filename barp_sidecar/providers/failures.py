"""Provider failures as domain errors, and what of an upstream error may be shown at all.

Owns the classification a retry/fallback decision needs (``retryable``, ``retry_after_s``) and two rules
for anything shown in a log line or an error message: an API key never appears (``redact``), and an
upstream error body is never quoted (``describe_upstream_error``): providers echo the request in their
errors (pydantic-style 422s list the offending input, i.e. the prompt), so only the status, the error's
type and code are kept, as identifier-like tokens, bounded. The gRPC status of each class comes from its
base in ``barp_sidecar.errors``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from barp_sidecar.errors import FailedPrecondition, ResourceExhausted, Unavailable

REDACTED = "[REDACTED]"
# Upstream error bodies are quoted in messages only up to this many characters.
MAX_QUOTED_CHARS = 300


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each non-empty secret (and its 8+ char prefixes) replaced.

    Providers echo parts of a wrong key back ("Incorrect API key provided: sk-abc...xyz"), so the first
    eight characters of a key are redacted as well as the whole key.
    """
    for secret in secrets:
        if not secret:
            continue
        text = text.replace(secret, REDACTED)
        if len(secret) >= 16:
            text = text.replace(secret[:8], REDACTED)
    return text


# A value from an upstream error body is shown only if it looks like an identifier (an error type or code).
_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
# Keys whose values name the kind of error (never ``message``, ``msg``, ``input`` or ``detail`` text).
_KIND_KEYS = ("type", "code", "status", "param")
# Distinct validation error types shown for a pydantic/FastAPI ``detail`` list.
_MAX_DETAIL_TYPES = 4


def _safe(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    return text if _SAFE_TOKEN.match(text) else None


def describe_upstream_error(body: bytes | str | Mapping[str, Any]) -> str:
    """What an upstream error may show: its type and code (``type=invalid_request_error
    code=context_length_exceeded``), never its message or any echoed input. At most ~300 characters."""
    payload: Any = body
    if not isinstance(body, Mapping):
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            payload = None
    if not isinstance(payload, Mapping):
        size = len(body) if isinstance(body, bytes | str) else 0
        return f"non-JSON error body ({size} bytes)"
    shown: dict[str, str] = {}
    error = payload.get("error")
    for source in (error if isinstance(error, Mapping) else {}, payload):
        for key in _KIND_KEYS:
            value = _safe(source.get(key))
            if value is not None and key not in shown:
                shown[key] = value
    if isinstance(error, str) and _safe(error) is not None:
        shown.setdefault("error", error)
    detail = payload.get("detail")
    if isinstance(detail, list):  # pydantic / FastAPI validation errors: count and types only
        kinds = sorted({t for item in detail if isinstance(item, Mapping) and (t := _safe(item.get("type")))})
        shown["validation_errors"] = str(len(detail))
        if kinds:
            shown["validation_types"] = ",".join(kinds[:_MAX_DETAIL_TYPES])
    if not shown:
        return "no error type or code in the body"
    return " ".join(f"{key}={value}" for key, value in shown.items())


def quote_upstream(body: bytes | str, secrets: Iterable[str]) -> str:
    """A short, redacted, printable excerpt of text for an error message. Only for text this process wrote
    about the upstream (connection errors, protocol problems), never for an upstream error body."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    if len(text) > MAX_QUOTED_CHARS:
        text = text[:MAX_QUOTED_CHARS] + "…"
    return redact(text, secrets)


class ProviderNotConfigured(FailedPrecondition):
    """The routed model has no enabled provider entry in the catalog."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"model {model!r} has no configured provider (enable it in the catalog with base_url and key)"
        )
        self.model = model


class NoConfiguredModel(FailedPrecondition):
    """None of the models a Complete call may use has an enabled provider in the catalog."""

    def __init__(self, models: list[str]) -> None:
        shown = models if len(models) <= 5 else [*models[:5], f"... {len(models) - 5} more"]
        super().__init__(
            f"no provider is configured for the allowed model(s) {shown}; "
            "enable them in the providers catalog (providers.catalog_file)"
        )
        self.models = models


class ProviderQueueFull(ResourceExhausted):
    """Too many calls are already waiting for this provider's concurrency slots."""

    def __init__(self, model: str, max_queued: int) -> None:
        super().__init__(f"provider for model {model!r} has {max_queued} calls queued; retry with backoff")
        self.model = model


class ProviderFailure(Unavailable):
    """One provider attempt (or the whole call to one provider) failed.

    ``kind``: connect | timeout | http_status | protocol | upstream_error | circuit_open | stream_broken.
    ``retryable``: the same provider may succeed if asked again (connect errors, timeouts, 429, 5xx).
    ``retry_after_s``: the provider's Retry-After, when it sent one.
    """

    def __init__(
        self,
        model: str,
        kind: str,
        detail: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"provider for model {model!r} failed ({kind}): {detail}")
        self.model = model
        self.kind = kind
        self.detail = detail
        self.retryable = retryable
        self.status = status
        self.retry_after_s = retry_after_s


class AllProvidersFailed(Unavailable):
    """The chosen model and every fallback failed; the message lists each failure in order."""

    def __init__(self, failures: list[ProviderFailure]) -> None:
        summary = "; ".join(str(f) for f in failures)
        super().__init__(f"every provider failed after retries and fallbacks: {summary}")
        self.failures = failures
