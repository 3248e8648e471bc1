"""Mirrors the trainer's published policies into NATS JetStream: Object Store + KV ``latest`` pointer.

Owns the upload order (the reconnect loop is ``broker.session_loop``'s): for every version the
``PolicyAnnouncer`` announces, its weights, calibration set (if any) and manifest go into
``events.policy_object_bucket`` (objects ``v{N}/…``; the Object Store records their SHA-256 digests)
*before* KV ``latest`` points at it, so a sidecar never sees a pointer to a version it cannot download.
On (re)connect every version in the local ``CheckpointStore`` missing from the Object Store is uploaded
too, so ``Admin.PinPolicy`` can roll back to any of them. The layout and the announcement format belong
to ``barp_sidecar.policy.nats_policies``; what is published, and when, to the training loop.

Fenced mode (trainer failover, ``failover.py``): constructed with a ``PointerFence``, the mirror skips
the sweep, uploads each version's learner state too (``v{N}/learner-state.safetensors``, what a standby
resumes from), checks the lease before every upload, and moves ``latest`` only by a KV update at the
revision it expects: a replica that lost its lease, or was overtaken by another writer, never moves the
pointer (``FencedOut``; the version is not published).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from barp_sidecar.broker.nats_connection import NatsConnector
from barp_sidecar.broker.session_loop import BrokerSessionLoop
from barp_sidecar.policy.calibration import CALIBRATION_FILE
from barp_sidecar.policy.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, CheckpointStore
from barp_sidecar.policy.nats_policies import (
    LATEST_KEY,
    announcement_bytes,
    ensure_policy_buckets,
    object_name,
)
from barp_sidecar.policy.version import PolicyVersion
from trainer.service.learner_state import state_path
from trainer.service.policy_source import PolicyAnnouncer

log = structlog.get_logger("trainer.service.nats_policy_mirror")
LEARNER_STATE_OBJECT = "learner-state.safetensors"


class FencedOut(Exception):
    """This replica may not move the ``latest`` pointer (lease lost, or another writer moved it)."""


@dataclass
class PointerFence:
    """The expected KV revision of ``latest`` (0 = must not exist), the version it holds, and the lease
    check; ``on_fenced`` is called once when a write is refused."""

    revision: int
    version: int
    lease_held: Callable[[], bool]
    state_dir: Path
    on_fenced: Callable[[str], None]
    fenced: bool = False

    def check(self) -> None:
        if self.fenced or not self.lease_held():
            self.refuse("the lease is not held")

    def refuse(self, reason: str) -> None:
        if not self.fenced:
            self.fenced = True
            self.on_fenced(reason)
        raise FencedOut(reason)


class NatsPolicyMirror(BrokerSessionLoop):
    """``start()`` / ``close()``; ``mirrored_version`` is the version KV ``latest`` points at."""

    task_name = "nats-policy-mirror"
    log_prefix = "policy_mirror"

    def __init__(
        self,
        connector: NatsConnector,
        store: CheckpointStore,
        announcer: PolicyAnnouncer,
        seed: int | None = None,
        fence: PointerFence | None = None,
    ) -> None:
        super().__init__(connector, seed)
        self.fence = fence
        self.store = store
        self.announcer = announcer
        self.mirrored_version = 0
        self.uploads = 0

    def progress(self) -> int:
        return self.uploads + self.mirrored_version

    async def _upload(self, objects: Any, version: int) -> None:
        errors = importlib.import_module("nats.js.errors")
        files = [(name, self.store.path(version) / name) for name in (WEIGHTS_FILE, CALIBRATION_FILE)]
        if self.fence is not None:
            files.append((LEARNER_STATE_OBJECT, state_path(self.fence.state_dir, version)))
        files.append((MANIFEST_FILE, self.store.path(version) / MANIFEST_FILE))  # last: it completes v{N}
        for name, path in files:
            if name != MANIFEST_FILE and not await asyncio.to_thread(path.exists):
                continue  # a version published without a calibration set (or a learner state)
            if self.fence is not None:
                self.fence.check()
            key = object_name(version, name)
            try:
                await objects.get_info(key)
                continue  # already there (versions are immutable)
            except errors.NotFoundError:
                pass
            data = await asyncio.to_thread(path.read_bytes)
            await objects.put(key, data)
            self.uploads += 1

    async def session(self, client: Any) -> None:
        js = client.jetstream(timeout=self.settings.publish_timeout_s)
        objects, kv = await ensure_policy_buckets(js, self.settings)
        if self.fence is None:  # fenced: older versions were uploaded by whichever replica published them
            for version in await asyncio.to_thread(self.store.versions):
                await self._upload(objects, version)
        self.set_state("connected", bucket=self.settings.policy_object_bucket)
        try:
            await self._follow(client, objects, kv)
        except FencedOut as exc:
            log.error("policy_mirror_fenced", reason=str(exc))  # the app stops this replica

    async def _follow(self, client: Any, objects: Any, kv: Any) -> None:
        current: PolicyVersion | None = self.announcer.current
        while current is not None:
            if self.fence is None:
                await self._upload(objects, current.version)
                await kv.put(LATEST_KEY, announcement_bytes(current))
            elif current.version != self.fence.version:
                await self._upload(objects, current.version)
                await self._fenced_put(kv, current)
            self.mirrored_version = current.version
            log.info("policy_mirrored", version=current.version)
            if not client.is_connected:
                raise ConnectionError("the NATS connection closed")
            current = await self.announcer.wait_newer(current.version)

    async def _fenced_put(self, kv: Any, current: PolicyVersion) -> None:
        assert self.fence is not None
        self.fence.check()
        errors = importlib.import_module("nats.js.errors")
        try:
            revision = await kv.update(LATEST_KEY, announcement_bytes(current), last=self.fence.revision)
        except errors.KeyWrongLastSequenceError:
            self.fence.refuse(f"latest moved past revision {self.fence.revision} (another writer)")
        self.fence.revision, self.fence.version = int(revision), current.version
