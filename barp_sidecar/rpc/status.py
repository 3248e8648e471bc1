"""The one table from domain errors (``barp_sidecar.errors``) to gRPC statuses, and the status they become.

Owns the mapping only: code, the stable ``google.rpc.ErrorInfo`` reason, and the retry delay a client
should wait (``google.rpc.RetryInfo``) when retrying helps. ``rpc.boundary`` applies it to every RPC of
every service (Router, Admin, Trainer); anything not in the table is a bug and surfaces as INTERNAL (never
UNKNOWN) with its type name, while the traceback is logged. The reasons are a public contract, listed in
docs/errors.md (a test keeps the two in sync): add rows, never rename one.

Every status carries ``google.rpc.Status`` details (``grpc-status-details-bin``): ``ErrorInfo`` always,
``BadRequest`` field violations for INVALID_ARGUMENT, ``RetryInfo`` where a retry helps. Messages are
bounded (``bounded_text``) so details never exceed a client's metadata limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from barp_sidecar import errors
from barp_sidecar.bounded_text import bounded_text
from barp_sidecar.policy.inference import NonFiniteOutput
from barp_sidecar.providers.failures import (
    AllProvidersFailed,
    NoConfiguredModel,
    ProviderFailure,
    ProviderNotConfigured,
    ProviderQueueFull,
)
from barp_sidecar.rewards.spool import SpoolFull

# ``ErrorInfo.domain`` of every error this project emits.
ERROR_DOMAIN = "barp.v1"
# Status messages are cut at this many UTF-8 bytes (gRPC percent-encodes them into a header, up to 3x).
MAX_STATUS_MESSAGE_BYTES = 1000
INTERNAL_REASON = "INTERNAL"


@dataclass(frozen=True)
class StatusRule:
    """How one error class reaches the caller. ``retry_delay_s`` None = no RetryInfo (retrying won't help
    without changing the request or the sidecar's state)."""

    error_type: type[BaseException]
    code: grpc.StatusCode
    reason: str
    retry_delay_s: float | None = None


# First match wins: subclasses come before their bases.
STATUS_RULES: tuple[StatusRule, ...] = (
    StatusRule(errors.MalformedRequest, grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"),
    StatusRule(errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD"),
    StatusRule(errors.DecisionNotFound, grpc.StatusCode.NOT_FOUND, "DECISION_NOT_FOUND"),
    StatusRule(errors.NotFound, grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
    StatusRule(errors.NoAllowedModel, grpc.StatusCode.FAILED_PRECONDITION, "NO_ALLOWED_MODEL"),
    StatusRule(ProviderNotConfigured, grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_NOT_CONFIGURED"),
    StatusRule(NoConfiguredModel, grpc.StatusCode.FAILED_PRECONDITION, "NO_CONFIGURED_PROVIDER"),
    StatusRule(errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION"),
    StatusRule(errors.AdmissionFull, grpc.StatusCode.RESOURCE_EXHAUSTED, "ADMISSION_FULL", 0.05),
    StatusRule(ProviderQueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_QUEUE_FULL", 0.1),
    StatusRule(SpoolFull, grpc.StatusCode.RESOURCE_EXHAUSTED, "REWARD_SPOOL_FULL", 1.0),
    StatusRule(errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED", 0.1),
    StatusRule(errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
    StatusRule(errors.ShuttingDown, grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", 0.1),
    StatusRule(NonFiniteOutput, grpc.StatusCode.UNAVAILABLE, "POLICY_OUTPUT_NONFINITE", 1.0),
    StatusRule(AllProvidersFailed, grpc.StatusCode.UNAVAILABLE, "ALL_PROVIDERS_FAILED", 1.0),
    StatusRule(ProviderFailure, grpc.StatusCode.UNAVAILABLE, "PROVIDER_FAILED", 1.0),
    StatusRule(errors.Unavailable, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE", 1.0),
    StatusRule(errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
    StatusRule(errors.ConfigError, grpc.StatusCode.FAILED_PRECONDITION, "CONFIG_INVALID"),
    StatusRule(errors.CheckpointError, grpc.StatusCode.FAILED_PRECONDITION, "CHECKPOINT_REJECTED"),
    StatusRule(errors.DataError, grpc.StatusCode.INVALID_ARGUMENT, "DATA_INVALID"),
)
# Kept for callers that only need the code (the table above is the source).
STATUS_BY_ERROR: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = tuple(
    (rule.error_type, rule.code) for rule in STATUS_RULES
)


def rule_for(error: BaseException) -> StatusRule | None:
    """The first table row ``error`` is an instance of; None for an unexpected exception (a bug)."""
    for rule in STATUS_RULES:
        if isinstance(error, rule.error_type):
            return rule
    return None


def status_for(error: BaseException) -> grpc.StatusCode:
    """The status code for ``error``: the first table entry it is an instance of, else INTERNAL."""
    rule = rule_for(error)
    return grpc.StatusCode.INTERNAL if rule is None else rule.code


def status_message(error: BaseException) -> str:
    """The message the caller sees (and the access log shows): bounded; a bug shows only its type."""
    if rule_for(error) is None:
        return f"internal error ({type(error).__name__})"
    return bounded_text(str(error), MAX_STATUS_MESSAGE_BYTES)


def _packed(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _retry_delay_s(error: BaseException, rule: StatusRule) -> float | None:
    """The rule's delay, or a longer Retry-After the provider asked for."""
    if rule.retry_delay_s is None:
        return None
    asked = getattr(error, "retry_after_s", None)
    failures = getattr(error, "failures", None)
    if asked is None and failures:
        asked = max((f.retry_after_s for f in failures if f.retry_after_s is not None), default=None)
    return max(rule.retry_delay_s, asked) if isinstance(asked, int | float) else rule.retry_delay_s


def rich_status_for(error: BaseException) -> grpc.Status:
    """The full status for ``error``: code, bounded message and ``google.rpc.Status`` details."""
    rule = rule_for(error)
    message = status_message(error)
    if rule is None:
        code, reason = grpc.StatusCode.INTERNAL, INTERNAL_REASON
        retry_s: float | None = None
    else:
        code, reason = rule.code, rule.reason
        retry_s = _retry_delay_s(error, rule)
    details = [_packed(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))]
    if isinstance(error, errors.InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=bounded_text(error.field, 200),
            description=bounded_text(getattr(error, "description", str(error)), 400),
        )
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    if retry_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_s * 1e9))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=details))
