"""Every domain error maps to a specific gRPC status; nothing known becomes UNKNOWN."""

from __future__ import annotations

import grpc
import pytest

from barp_sidecar import errors
from barp_sidecar.rpc.status import status_for


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument("prompt", "empty"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("decision abc"), grpc.StatusCode.NOT_FOUND),
        (errors.FailedPrecondition("masked"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.ResourceExhausted("full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.DeadlineExceeded("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Unavailable("stopping"), grpc.StatusCode.UNAVAILABLE),
        (errors.CheckpointError("bad"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.ConfigError("a.b", "bad"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.DataError("row 3"), grpc.StatusCode.INVALID_ARGUMENT),
        (ValueError("a bug"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_for(error: BaseException, code: grpc.StatusCode) -> None:
    assert status_for(error) == code


def test_every_domain_error_class_is_in_the_table() -> None:
    def subclasses(cls: type) -> set[type]:
        found = set(cls.__subclasses__())
        for sub in list(found):
            found |= subclasses(sub)
        return found

    for cls in subclasses(errors.BarpError):
        instance = cls.__new__(cls)
        assert status_for(instance) not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), cls
