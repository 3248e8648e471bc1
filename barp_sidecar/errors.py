"""The domain error tree. Every failure a caller can cause or observe is one of these classes.

Owns only the classes; ``barp_sidecar.rpc.status`` maps them to gRPC status codes in one table.
Messages name the offending field or object so a caller can fix the request without reading logs.
"""

from __future__ import annotations


class BarpError(Exception):
    """Base of every error raised on purpose by barp-sidecar."""


class InvalidArgument(BarpError):
    """A request field is malformed. ``field`` names it (e.g. ``preference.quality_weight``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(BarpError):
    """A referenced object (decision, policy version, model) does not exist."""


class FailedPrecondition(BarpError):
    """The request is well-formed but cannot be served in the current state (e.g. every model masked)."""


class ResourceExhausted(BarpError):
    """Admission is full; the caller should back off and retry."""


class DeadlineExceeded(BarpError):
    """The caller's deadline passed before the work was done."""


class Unavailable(BarpError):
    """The service is shutting down, or every provider failed after retries and fallbacks."""


class ConfigError(BarpError):
    """A setting is invalid. ``key`` is its dotted path (e.g. ``batching.max_wait_ms``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class CheckpointError(BarpError):
    """A policy checkpoint is missing, corrupt, or incompatible with this sidecar."""


class DataError(BarpError):
    """A training/evaluation data file has bad rows; the message names file and line."""
