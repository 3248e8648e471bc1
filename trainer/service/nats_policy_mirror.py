"""Mirrors the trainer's published policies into NATS JetStream: Object Store + KV ``latest`` pointer.

Owns the upload order (the reconnect loop is ``broker.session_loop``'s): for every version the
``PolicyAnnouncer`` announces, its weights, calibration set (if any) and manifest go into
``events.policy_object_bucket`` (objects ``v{N}/…``; the Object Store records their SHA-256 digests)
*before* KV ``latest`` points at it, so a sidecar never sees a pointer to a version it cannot download.
On (re)connect every version in the local ``CheckpointStore`` missing from the Object Store is uploaded
too, so ``Admin.PinPolicy`` can roll back to any of them. The layout and the announcement format belong
to ``barp_sidecar.policy.nats_policies``; what is published, and when, to the training loop.
"""

from __future__ import annotations

import asyncio
import importlib
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
from trainer.service.policy_source import PolicyAnnouncer

log = structlog.get_logger("trainer.service.nats_policy_mirror")


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
    ) -> None:
        super().__init__(connector, seed)
        self.store = store
        self.announcer = announcer
        self.mirrored_version = 0
        self.uploads = 0

    def progress(self) -> int:
        return self.uploads + self.mirrored_version

    async def _upload(self, objects: Any, version: int) -> None:
        errors = importlib.import_module("nats.js.errors")
        for name in (WEIGHTS_FILE, CALIBRATION_FILE, MANIFEST_FILE):
            path = self.store.path(version) / name
            if name == CALIBRATION_FILE and not await asyncio.to_thread(path.exists):
                continue  # a version published without a calibration set
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
        for version in await asyncio.to_thread(self.store.versions):
            await self._upload(objects, version)
        self.set_state("connected", bucket=self.settings.policy_object_bucket)
        current: PolicyVersion | None = self.announcer.current
        while current is not None:
            await self._upload(objects, current.version)
            await kv.put(LATEST_KEY, announcement_bytes(current))
            self.mirrored_version = current.version
            log.info("policy_mirrored", version=current.version)
            if not client.is_connected:
                raise ConnectionError("the NATS connection closed")
            current = await self.announcer.wait_newer(current.version)
