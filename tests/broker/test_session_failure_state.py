"""Which broker state a failed NATS session shows (``barp_event_broker_state``): ``unreachable`` only when
the broker or the way to it failed; ``session_failed`` when the connection worked but JetStream refused a
request or this process failed (a disk error, a bug), so an operator is not sent to look at NATS. The
real-broker path (a crash around the trainer's fsync shows ``session_failed``, not ``unreachable``) is in
tests/broker/test_nats_pull.py."""

from __future__ import annotations

import pytest

from barp_sidecar.broker.nats_connection import BrokerUnavailable
from barp_sidecar.broker.session_loop import BROKER_STATES, session_failure_state

nats_errors = pytest.importorskip("nats.errors")
js_errors = pytest.importorskip("nats.js.errors")


@pytest.mark.parametrize(
    ("error", "state"),
    [
        (ConnectionResetError("reset by peer"), "unreachable"),
        (TimeoutError(), "unreachable"),
        (BrokerUnavailable("no server"), "unreachable"),
        (nats_errors.TimeoutError(), "unreachable"),
        (nats_errors.ConnectionClosedError(), "unreachable"),
        (nats_errors.NoRespondersError(), "unreachable"),
        (js_errors.ServiceUnavailableError(code=503, description="JetStream not ready"), "unreachable"),
        (js_errors.NoStreamResponseError(), "unreachable"),
        (js_errors.BadRequestError(code=400, description="stream name already in use"), "session_failed"),
        (js_errors.NotFoundError(code=404, description="consumer not found"), "session_failed"),
        (OSError(28, "No space left on device"), "session_failed"),
        (ValueError("a bug"), "session_failed"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else value,
)
def test_a_failed_session_blames_the_broker_only_for_broker_failures(error, state):
    assert session_failure_state(error) == state
    assert state in BROKER_STATES  # the metric has a series for it
