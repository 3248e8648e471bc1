"""Suite-wide isolation: durable state of every sidecar the tests start goes under a temporary directory.

A sidecar keeps its spool and fetched policies under ``state.dir`` (default ``$XDG_STATE_HOME/barp-sidecar``
or ``~/.local/state/barp-sidecar``). Test processes, and the subprocesses they start (which inherit the
environment), must never share the real one: with parallel runs on one machine they would share a spool.

Also the two fixtures most server tests share: a tiny policy checkpoint per module and a fake provider, and
grpc.aio's engine held for the whole session, as the processes hold it (``process.hold_grpc_aio_engine``):
otherwise every test that closes its last server or channel tears the engine down, and after a flood of
calls that teardown can hang forever joining grpc's poller thread (grpc/grpc#40989).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from barp_sidecar.process import hold_grpc_aio_engine
from barp_sidecar.providers.fake_server import FakeProvider, FakeProviderOptions
from tests.support.sidecar import make_tiny_checkpoint


def pytest_configure(config: pytest.Config) -> None:
    hold_grpc_aio_engine()


@pytest.fixture(autouse=True, scope="session")
def isolated_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    previous = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))
    yield
    if previous is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = previous


@pytest.fixture(autouse=True)
def per_test_state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's own processes get their own state directory (module-scoped servers keep the session's)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg-state-test")))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny policy (hash encoder, the test models), one per test module."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("policy") / "v1")


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    """A fake OpenAI/Anthropic provider on 127.0.0.1 with default behaviour."""
    async with FakeProvider(FakeProviderOptions()) as provider:
        yield provider
