"""Which policy versions this sidecar knows, which one is pinned, and installing one (validate -> swap).

Owns the version catalogue behind Admin (GetPolicy / ListPolicies / PinPolicy), the pin, and the single
install path every new policy goes through: obtain the checkpoint directory (local or fetched by a
``CheckpointFetcher``), validate it off the event loop with ``load_checkpoint`` against the serving model
list and encoder (sha256, shapes, dry forward pass), then ``registry.swap``. A rejected checkpoint leaves
the serving policy untouched, is counted by reason, and logged (``policy_rejected``).

Knows nothing about gRPC: the trainer watcher and the Admin servicer call into it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import structlog

from barp_sidecar.errors import (
    RETRYABLE_REJECTIONS,
    CheckpointError,
    FailedPrecondition,
    NotFound,
    RejectionReason,
)
from barp_sidecar.policy.checkpoint import LoadedPolicy, load_checkpoint
from barp_sidecar.policy.version import PolicyVersion

log = structlog.get_logger("barp_sidecar.policy.manager")


class ServingRegistry(Protocol):
    """What the manager needs from ``PolicyRegistry``: the current snapshot, a check, an atomic swap."""

    def current(self) -> LoadedPolicy: ...

    def check(self, policy: LoadedPolicy) -> None:
        """Raise CheckpointError unless ``policy`` could be swapped in."""
        ...

    def check_models(self, models: tuple[str, ...], source: object = "policy") -> None:
        """Raise CheckpointError unless a policy with ``models`` could serve (checked before fetching)."""
        ...

    def swap(self, new: LoadedPolicy) -> LoadedPolicy: ...


# Fetch version N (expected weights sha256 or "") into a new local directory; raise CheckpointError.
CheckpointFetcher = Callable[[int, str], Awaitable[Path]]


# Retrying a version whose files may still be arriving: first delay, doubling up to the cap.
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 30.0


class PolicyManager:
    """Version catalogue + pin + the validate-then-swap install path. Event-loop only."""

    def __init__(
        self,
        registry: ServingRegistry,
        source: str = "builtin",
        fetcher: CheckpointFetcher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``fetcher`` obtains versions this sidecar has no directory for (None: only local ones install)."""
        self._clock = clock
        self.registry = registry
        self.fetcher = fetcher
        self.pinned_version: int | None = None
        self.latest_announced: PolicyVersion | None = None
        self.swaps_total = 0
        self.rejected_total: Counter[str] = Counter()
        self._known: dict[int, PolicyVersion] = {}
        # (version, announced sha256) pairs that failed validation for good: not retried, logged once.
        self._rejected: set[tuple[int, str]] = set()
        # Pairs that failed for a reason time may cure (files still arriving): next attempt, current delay.
        self._retry: dict[tuple[int, str], tuple[float, float]] = {}
        self._lock = asyncio.Lock()
        current = registry.current()
        self._remember_loaded(current, source)

    # -- catalogue ------------------------------------------------------------------------------------

    @staticmethod
    def _entry(policy: LoadedPolicy, source: str) -> PolicyVersion:
        return PolicyVersion.of(policy.manifest, source=source, directory=policy.directory)

    def _remember_loaded(self, policy: LoadedPolicy, source: str) -> PolicyVersion:
        # Versions are per trainer: a trainer's v1 may differ from the startup v1. The latest info wins.
        known = self._entry(policy, source)
        self._known[known.version] = known
        return known

    def current(self) -> PolicyVersion:
        policy = self.registry.current()
        known = self._known.get(policy.version)
        if known is None or known.weights_sha256 != policy.manifest.weights_sha256:
            return self._entry(policy, "unknown")
        return known

    def add_available(self, known: PolicyVersion) -> None:
        """A version that can be installed (e.g. found in a checkpoint store) without announcing it."""
        if known.version not in self._known:
            self._known[known.version] = known

    def list(self) -> list[PolicyVersion]:
        return [self._known[v] for v in sorted(self._known)]

    # -- announcements and installs --------------------------------------------------------------------

    async def on_announcement(self, announced: PolicyVersion) -> bool:
        """A newer version exists upstream. Installs it unless pinned or already serving; True if swapped."""
        previous = self._known.get(announced.version)
        if previous is None or previous.weights_sha256 != announced.weights_sha256:
            self._known[announced.version] = announced
        self.latest_announced = announced
        if self.pinned_version is not None:
            log.info("policy_announcement_ignored", version=announced.version, pinned=self.pinned_version)
            return False
        if self.current().weights_sha256 == announced.weights_sha256:
            return False
        key = (announced.version, announced.weights_sha256)
        if key in self._rejected:
            return False  # already rejected (and logged once); a poller would otherwise retry forever
        retry = self._retry.get(key)
        if retry is not None and self._clock() < retry[0]:
            return False  # backing off: the files may still be arriving
        try:
            await self.install(announced.version, announced.weights_sha256)
        except CheckpointError:
            return False
        return True

    def record_rejection(self, version: int, reason: RejectionReason, error: str) -> None:
        """Count and log a version rejected before it reached ``install`` (e.g. an unreadable manifest)."""
        self.rejected_total[reason.value] += 1
        log.error("policy_rejected", version=version, reason=reason.value, error=error, retry_in_s=None)

    def _rejection(self, version: int, sha256: str, error: CheckpointError, serving: int) -> None:
        """Count a rejection once per (version, sha256); retryable reasons back off, the rest are final."""
        key = (version, sha256)
        previous = self._retry.get(key)
        if error.reason in RETRYABLE_REJECTIONS:
            delay_s = RETRY_INITIAL_S if previous is None else min(previous[1] * 2, RETRY_MAX_S)
            self._retry[key] = (self._clock() + delay_s, delay_s)
        else:
            self._retry.pop(key, None)
            self._rejected.add(key)
            delay_s = None
        if previous is None:
            self.rejected_total[error.reason.value] += 1
        log.error(
            "policy_rejected",
            version=version,
            reason=error.reason.value,
            error=str(error),
            serving=serving,
            retry_in_s=delay_s,
            attempt_counted=previous is None,
        )

    async def install(self, version: int, expected_sha256: str = "") -> PolicyVersion:
        """Obtain, validate and swap in ``version``. Raises CheckpointError (counted, logged) or NotFound."""
        async with self._lock:
            return await self._install_locked(version, expected_sha256)

    async def _install_locked(self, version: int, expected_sha256: str) -> PolicyVersion:
        known = self._known.get(version)
        current = self.registry.current()
        encoder = current.manifest.encoder
        try:
            if known is not None and known.models:
                self.registry.check_models(tuple(known.models), f"policy v{version}")
            usable = known is not None and (not expected_sha256 or known.weights_sha256 == expected_sha256)
            directory = known.directory if usable and known is not None else None
            if directory is None or not directory.is_dir():
                if self.fetcher is None:
                    raise NotFound(f"version: policy v{version} is not available to this sidecar")
                directory = await self.fetcher(version, expected_sha256)
            # The model list is the registry's to judge (a pool change may bring another one).
            loaded = await asyncio.to_thread(load_checkpoint, directory, None, encoder)
            if loaded.manifest.version != version:
                raise CheckpointError(
                    f"{directory}: manifest says version {loaded.manifest.version}, not {version}",
                    RejectionReason.VERSION_MISMATCH,
                )
            if expected_sha256 and loaded.manifest.weights_sha256 != expected_sha256:
                raise CheckpointError(
                    f"{directory}: weights sha256 {loaded.manifest.weights_sha256[:12]}… differs from the "
                    f"announced {expected_sha256[:12]}…",
                    RejectionReason.SHA256_MISMATCH,
                )
            self.registry.check(loaded)  # e.g. not validated with the serving int8 encoder file
        except CheckpointError as exc:
            self._rejection(version, expected_sha256, exc, current.version)
            raise
        self._retry.pop((version, expected_sha256), None)
        old = self.registry.swap(loaded)
        self.swaps_total += 1
        source = known.source if known is not None and known.source else "trainer"
        entry = self._remember_loaded(loaded, source)
        self._known[version] = replace(entry, directory=directory)
        log.info("policy_installed", version=version, previous=old.version, source=source)
        return self._known[version]

    async def retry_due(self) -> bool:
        """Try the latest announced version again once the backoff of its retryable rejection is over
        (e.g. a fetch that timed out while the broker elected a new leader); True if it was swapped in.
        For watchers that hear of a version only once (a KV watch): they call this while idle."""
        latest = self.latest_announced
        if latest is None or self.pinned_version is not None:
            return False
        retry = self._retry.get((latest.version, latest.weights_sha256))
        if retry is None or self._clock() < retry[0]:
            return False
        return await self.on_announcement(latest)

    async def retry_latest(self) -> bool:
        """Try the latest announced version again now, without waiting for its backoff (the catalog just
        changed, which may cure ``catalog_missing_model``); True if it was swapped in."""
        latest = self.latest_announced
        if latest is None:
            return False
        self._retry.pop((latest.version, latest.weights_sha256), None)
        return await self.on_announcement(latest)

    async def pin(self, version: int) -> PolicyVersion:
        """Serve ``version`` and ignore announcements until unpinned; 0 unpins (and catches up)."""
        if version < 0:
            raise NotFound(f"version: {version} is not a policy version")
        if version == 0:
            self.pinned_version = None
            log.info("policy_unpinned")
            latest = self.latest_announced
            if latest is not None and latest.weights_sha256 != self.current().weights_sha256:
                try:
                    await self.install(latest.version, latest.weights_sha256)
                except CheckpointError:
                    pass
            return self.current()
        if version != self.current().version or self.pinned_version is None:
            if version != self.current().version:
                known = self._known.get(version)
                try:
                    await self.install(version, known.weights_sha256 if known else "")
                except CheckpointError as exc:
                    raise FailedPrecondition(f"version: policy v{version} cannot be served: {exc}") from exc
        self.pinned_version = version
        log.info("policy_pinned", version=version)
        return self.current()
