"""The domain error tree. Every failure a caller can cause or observe is one of these classes.

Owns only the classes; ``barp_sidecar.rpc.status`` maps them to gRPC status codes in one table.
Messages name the offending field or object so a caller can fix the request without reading logs.
"""

from __future__ import annotations

from enum import StrEnum


class BarpError(Exception):
    """Base of every error raised on purpose by barp-sidecar."""


class InvalidArgument(BarpError):
    """A request field is malformed. ``field`` names it (e.g. ``preference.quality_weight``)."""

    def __init__(self, field: str, message: str) -> None:
        # Callers bound what they quote of a request (``bounded_text``); rpc.status bounds the rest.
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class MalformedRequest(InvalidArgument):
    """The request bytes are not a valid message (e.g. invalid UTF-8 in a string field): the stock
    deserializer's DecodeError, caught before any servicer runs."""


class NotFound(BarpError):
    """A referenced object (decision, policy version, model) does not exist."""


class DecisionNotFound(NotFound):
    """ReportOutcome for a decision id this sidecar never issued, or whose outcome window expired."""


class FailedPrecondition(BarpError):
    """The request is well-formed but cannot be served in the current state (e.g. every model masked)."""


class NoAllowedModel(FailedPrecondition):
    """Every model the request allows is disabled (or, for Complete, has no configured provider)."""


class ResourceExhausted(BarpError):
    """Admission is full; the caller should back off and retry."""


class AdmissionFull(ResourceExhausted):
    """The sidecar already holds its maximum of pending Route/Complete calls."""


class DeadlineExceeded(BarpError):
    """The caller's deadline passed before the work was done."""


class Unavailable(BarpError):
    """The service is shutting down, or every provider failed after retries and fallbacks."""


class ShuttingDown(Unavailable):
    """The process is stopping and accepts no new work; retry against another instance."""


class Unauthenticated(BarpError):
    """A call to a token-protected service (Admin) carried no bearer token or a wrong one."""


class ConfigError(BarpError):
    """A setting is invalid. ``key`` is its dotted path (e.g. ``batching.max_wait_ms``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class RejectionReason(StrEnum):
    """Why a checkpoint was rejected: the ``reason`` label of ``barp_policy_rejected_total`` and of the
    ``policy_rejected`` log event. Set where the problem is found, never guessed from the message."""

    MISSING_FILES = "missing_files"
    CORRUPT_MANIFEST = "corrupt_manifest"
    MISSING_WEIGHTS = "missing_weights"
    SHA256_MISMATCH = "sha256_mismatch"
    CORRUPT_WEIGHTS = "corrupt_weights"
    MODEL_LIST_MISMATCH = "arm_mismatch"  # the published reason label (metrics, logs) keeps its old spelling
    ENCODER_MISMATCH = "encoder_mismatch"
    VERSION_MISMATCH = "version_mismatch"
    NON_FINITE = "non_finite"
    FETCH_FAILED = "fetch_failed"
    INVALID = "invalid"
    CALIBRATION_INVALID = "calibration_invalid"
    # Another model list (a model-pool change) with a model this sidecar's catalog does not have yet.
    CATALOG_MISSING_MODEL = "catalog_missing_model"


# Reasons a later attempt can cure on its own (a writer still copying files, a network hiccup).
RETRYABLE_REJECTIONS = frozenset(
    {
        RejectionReason.MISSING_FILES,
        RejectionReason.MISSING_WEIGHTS,
        RejectionReason.SHA256_MISMATCH,
        RejectionReason.FETCH_FAILED,
        RejectionReason.CATALOG_MISSING_MODEL,  # cured by a catalog reload (which also retries at once)
    }
)


class CheckpointError(BarpError):
    """A policy checkpoint is missing, corrupt, or incompatible with this sidecar; ``reason`` says which."""

    def __init__(self, message: str, reason: RejectionReason = RejectionReason.INVALID) -> None:
        super().__init__(message)
        self.reason = reason


class DataError(BarpError):
    """A training/evaluation data file has bad rows; the message names file and line."""
