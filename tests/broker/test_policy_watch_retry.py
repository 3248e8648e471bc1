"""A sidecar that failed to download the latest announced version for a passing reason (the fetch timed
out while JetStream elected a new leader after a node died) installs it later although KV ``latest``
does not change again: the KV watch announces a version once, so ``NatsPolicyWatcher`` asks the
manager to retry while idle (``PolicyManager.retry_due``: only after the backoff, never a final
rejection, never while pinned). Found by tests/e2e/test_cluster_failover_faults_processes.py, where the
trainer had stopped publishing and a sidecar stayed on the version before the last one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from barp_sidecar.broker.nats_connection import NatsConnector
from barp_sidecar.broker.settings import EventsSettings
from barp_sidecar.errors import CheckpointError, RejectionReason
from barp_sidecar.policy.checkpoint import load_checkpoint, read_manifest
from barp_sidecar.policy.manager import RETRY_INITIAL_S, PolicyManager
from barp_sidecar.policy.nats_policies import NatsCheckpointFetcher, NatsPolicyWatcher, announcement_bytes
from barp_sidecar.policy.registry import PolicyRegistry
from barp_sidecar.policy.version import PolicyVersion
from tests.policy.test_checkpoint_sources import Clock
from tests.support.sidecar import make_tiny_checkpoint
from tests.support.waiting import wait_until

nats_errors = pytest.importorskip("nats.errors")


class FlakyFetcher:
    """Fails each of ``failures`` in turn (CheckpointError with that reason), then hands out ``directory``."""

    def __init__(self, directory: Path, *failures: RejectionReason) -> None:
        self.directory = directory
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self, version: int, expected_sha256: str) -> Path:
        self.calls += 1
        if self.failures:
            reason = self.failures.pop(0)
            raise CheckpointError(f"v{version}: {reason.value}", reason)
        return self.directory


def world(
    tmp_path: Path, *failures: RejectionReason
) -> tuple[PolicyManager, FlakyFetcher, PolicyVersion, Clock]:
    registry = PolicyRegistry(load_checkpoint(make_tiny_checkpoint(tmp_path / "v1", version=1, seed=1)))
    v2 = make_tiny_checkpoint(tmp_path / "v2", version=2, seed=2)
    fetcher = FlakyFetcher(v2, *failures)
    clock = Clock()
    manager = PolicyManager(registry, source="test", fetcher=fetcher, clock=clock)
    return manager, fetcher, PolicyVersion.of(read_manifest(v2), source="nats"), clock


async def test_a_fetch_that_timed_out_is_retried_once_its_backoff_is_over(tmp_path):
    manager, fetcher, v2, clock = world(tmp_path, RejectionReason.FETCH_FAILED)
    assert not await manager.on_announcement(v2)
    assert not await manager.retry_due()  # backing off
    assert fetcher.calls == 1
    clock.now += RETRY_INITIAL_S
    assert await manager.retry_due()
    assert manager.registry.current().version == 2 and fetcher.calls == 2
    assert not await manager.retry_due()  # serving it: nothing to retry


async def test_no_retry_for_a_final_rejection_or_while_pinned(tmp_path):
    manager, fetcher, v2, clock = world(tmp_path, RejectionReason.NON_FINITE)
    assert not await manager.on_announcement(v2)
    clock.now += 100
    assert not await manager.retry_due()
    assert fetcher.calls == 1

    manager, fetcher, v2, clock = world(tmp_path / "pinned", RejectionReason.FETCH_FAILED)
    assert not await manager.on_announcement(v2)
    await manager.pin(1)
    clock.now += 100
    assert not await manager.retry_due()
    assert fetcher.calls == 1


class OneAnnouncementWatch:
    """A KV watch that delivers ``value`` once and then only times out (``latest`` never changes again)."""

    def __init__(self, value: bytes) -> None:
        self.value: bytes | None = value

    async def updates(self, timeout: float) -> object:  # noqa: ASYNC109 (nats-py's KV watcher signature)
        value, self.value = self.value, None
        if value is None:
            await asyncio.sleep(0.01)
            raise nats_errors.TimeoutError
        return type("Entry", (), {"value": value, "operation": None, "revision": 1})()


class Connected:
    is_connected = True


async def test_the_nats_watcher_installs_the_only_announcement_after_a_failed_fetch(tmp_path):
    manager, fetcher, v2, clock = world(tmp_path, RejectionReason.FETCH_FAILED, RejectionReason.FETCH_FAILED)
    connector = NatsConnector(EventsSettings(backend="nats"), {}, "test")
    watcher = NatsPolicyWatcher(connector, NatsCheckpointFetcher(tmp_path / "downloads"), manager)
    follow = asyncio.create_task(watcher._follow(Connected(), OneAnnouncementWatch(announcement_bytes(v2))))
    try:
        await wait_until(lambda: fetcher.calls == 1, 5, "the first fetch")
        for attempt in (2, 3):
            clock.now += RETRY_INITIAL_S * 2 ** (attempt - 2)  # past this attempt's backoff
            await wait_until(lambda: fetcher.calls == attempt, 5, f"fetch attempt {attempt}")  # noqa: B023
        await wait_until(lambda: manager.registry.current().version == 2, 5, "v2 installed")
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
    assert fetcher.calls == 3
