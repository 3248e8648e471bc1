"""Fixtures of the NATS tests: a real ``nats-server -js`` on a free loopback port (skipped with a clear
reason when the binary is absent)."""

from __future__ import annotations

import pytest

from tests.support.nats_server import NatsServer, require_nats_server


@pytest.fixture
def broker(tmp_path):
    require_nats_server()
    node = NatsServer(tmp_path / "nats-store").start()
    yield node
    node.stop()
