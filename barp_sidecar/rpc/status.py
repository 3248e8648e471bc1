"""The one table from domain errors (``barp_sidecar.errors``) to gRPC status codes.

Owns the mapping only. Servicers catch ``BarpError`` and call ``status_for``; anything not in the table is a
bug and surfaces as INTERNAL (never UNKNOWN) with its type name, while the traceback is logged.
"""

from __future__ import annotations

import grpc

from barp_sidecar import errors

STATUS_BY_ERROR: tuple[tuple[type[errors.BarpError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.CheckpointError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.DataError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_for(error: BaseException) -> grpc.StatusCode:
    """The status code for ``error``: the first table entry it is an instance of, else INTERNAL."""
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL
