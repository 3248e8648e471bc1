"""Mirrors the trainer's published policies into NATS JetStream: Object Store + KV ``latest`` pointer.

Owns one broker connection (reconnects with the shared backoff) and the upload order: for every version
the ``PolicyAnnouncer`` announces, the manifest and weights go into ``events.policy_object_bucket``
(objects ``v{N}/…``; the Object Store records their SHA-256 digests) *before* KV ``latest`` points at
it, so a sidecar never sees a pointer to a version it cannot download. On (re)connect every version in
the local ``CheckpointStore`` missing from the Object Store is uploaded too, so ``Admin.PinPolicy`` can
roll back to any of them. The layout and the announcement format belong to
``barp_sidecar.policy.nats_policies``; what is published, and when, to the training loop.
"""

from __future__ import annotations

import asyncio
import importlib
import random
from typing import Any

import structlog

from barp_sidecar.backoff import ReconnectBackoff
from barp_sidecar.broker.nats_connection import BrokerUnavailable, NatsConnector
from barp_sidecar.policy.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, CheckpointStore
from barp_sidecar.policy.nats_policies import (
    LATEST_KEY,
    announcement_bytes,
    ensure_policy_buckets,
    object_name,
)
from barp_sidecar.policy.version import PolicyVersion
from barp_sidecar.tasks import cancel_and_wait
from trainer.service.policy_source import PolicyAnnouncer

log = structlog.get_logger("trainer.service.nats_policy_mirror")


class NatsPolicyMirror:
    """``start()`` / ``close()``; ``mirrored_version`` is the version KV ``latest`` points at."""

    def __init__(
        self,
        connector: NatsConnector,
        store: CheckpointStore,
        announcer: PolicyAnnouncer,
        seed: int | None = None,
    ) -> None:
        s = connector.settings
        self.settings = s
        self.connector = connector
        self.store = store
        self.announcer = announcer
        self.mirrored_version = 0
        self.uploads = 0
        self._backoff = ReconnectBackoff(
            s.reconnect_initial_backoff_s, s.reconnect_max_backoff_s, random.Random(seed)
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="nats-policy-mirror")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            before = self.uploads
            try:
                client = await self.connector.connect()
            except BrokerUnavailable as exc:
                log.warning("policy_mirror_disconnected", error=str(exc))
            else:
                try:
                    await self._session(client)
                    return  # the announcer closed: the trainer is stopping
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("policy_mirror_disconnected", error=repr(exc))
                finally:
                    try:
                        await asyncio.wait_for(client.close(), 2.0)
                    except Exception as exc:  # a broken connection may fail to close; it is gone either way
                        log.debug("policy_mirror_close_failed", error=repr(exc))
            await asyncio.sleep(self._backoff.next_delay_s(self.uploads > before))

    async def _upload(self, objects: Any, version: int) -> None:
        errors = importlib.import_module("nats.js.errors")
        for name in (MANIFEST_FILE, WEIGHTS_FILE):
            key = object_name(version, name)
            try:
                await objects.get_info(key)
                continue  # already there (versions are immutable)
            except errors.NotFoundError:
                pass
            data = await asyncio.to_thread((self.store.path(version) / name).read_bytes)
            await objects.put(key, data)
            self.uploads += 1

    async def _session(self, client: Any) -> None:
        js = client.jetstream(timeout=self.settings.publish_timeout_s)
        objects, kv = await ensure_policy_buckets(js, self.settings)
        for version in await asyncio.to_thread(self.store.versions):
            await self._upload(objects, version)
        log.info("policy_mirror_connected", bucket=self.settings.policy_object_bucket)
        current: PolicyVersion | None = self.announcer.current
        while current is not None:
            await self._upload(objects, current.version)
            await kv.put(LATEST_KEY, announcement_bytes(current))
            self.mirrored_version = current.version
            log.info("policy_mirrored", version=current.version)
            if not client.is_connected:
                raise ConnectionError("the NATS connection closed")
            current = await self.announcer.wait_newer(current.version)
