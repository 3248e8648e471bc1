"""Provider failures as domain errors, and redaction of secrets from anything that may be shown.

Owns the classification a retry/fallback decision needs (``retryable``, ``retry_after_s``) and the rule
that an API key never reaches a log line or an error message: every message built from upstream text goes
through ``redact``. The gRPC status of each class comes from its base in ``barp_sidecar.errors``.
"""

from __future__ import annotations

from collections.abc import Iterable

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


def quote_upstream(body: bytes | str, secrets: Iterable[str]) -> str:
    """A short, redacted, printable excerpt of an upstream body for an error message."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    if len(text) > MAX_QUOTED_CHARS:
        text = text[:MAX_QUOTED_CHARS] + "…"
    return redact(text, secrets)


class ProviderNotConfigured(FailedPrecondition):
    """The routed model has no enabled provider entry in the catalog."""

    def __init__(self, arm: str) -> None:
        super().__init__(
            f"model {arm!r} has no configured provider (enable it in the catalog with base_url and key)"
        )
        self.arm = arm


class NoConfiguredModel(FailedPrecondition):
    """None of the models a Complete call may use has an enabled provider in the catalog."""

    def __init__(self, arms: list[str]) -> None:
        shown = arms if len(arms) <= 5 else [*arms[:5], f"... {len(arms) - 5} more"]
        super().__init__(
            f"no provider is configured for the allowed model(s) {shown}; "
            "enable them in the providers catalog (providers.catalog_file)"
        )
        self.arms = arms


class ProviderQueueFull(ResourceExhausted):
    """Too many calls are already waiting for this provider's concurrency slots."""

    def __init__(self, arm: str, max_queued: int) -> None:
        super().__init__(f"provider for model {arm!r} has {max_queued} calls queued; retry with backoff")
        self.arm = arm


class ProviderFailure(Unavailable):
    """One provider attempt (or the whole call to one provider) failed.

    ``kind``: connect | timeout | http_status | protocol | upstream_error | circuit_open | stream_broken.
    ``retryable``: the same provider may succeed if asked again (connect errors, timeouts, 429, 5xx).
    ``retry_after_s``: the provider's Retry-After, when it sent one.
    """

    def __init__(
        self,
        arm: str,
        kind: str,
        detail: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"provider for model {arm!r} failed ({kind}): {detail}")
        self.arm = arm
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
