"""Policies through NATS JetStream: an Object Store holds every published version, a KV key points at
the latest; sidecars watch the key, download, verify and hand the version to ``PolicyManager``.

Owns the layout shared with the trainer (objects ``v{N}/manifest.json``, ``v{N}/policy.safetensors``
and, when the manifest names one, ``v{N}/calibration.safetensors`` in ``events.policy_object_bucket``;
key ``latest`` of ``events.policy_kv_bucket`` holding the JSON announcement: version, weights sha256,
models, size), declaring the buckets, ``NatsPolicyWatcher`` (KV watch with reconnects and the shared
backoff) and ``NatsCheckpointFetcher`` (the manager's ``CheckpointFetcher``: Object Store downloads
through ``PolicyObjectReader``, which checks the store's SHA-256 digests, plus the announced weights
sha256 checked here, written atomically into the cache directory). Validation and the swap stay in
``PolicyManager`` exactly as for the gRPC path; ``Admin.PinPolicy`` fetches older versions through the
same fetcher. Both are built before the watcher, which gets them through its constructor.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

import structlog

from barp_sidecar.broker.nats_connection import NatsConnector
from barp_sidecar.broker.session_loop import BrokerSessionLoop
from barp_sidecar.broker.settings import EventsSettings
from barp_sidecar.errors import CheckpointError, NotFound, RejectionReason
from barp_sidecar.policy.checkpoint import WEIGHTS_FILE
from barp_sidecar.policy.manager import PolicyManager
from barp_sidecar.policy.version import PolicyVersion
from barp_sidecar.policy.watcher import (
    EXPECTED_FILES,
    MAX_CHECKPOINT_BYTES,
    check_announced_weights,
    named_calibration,
    write_checkpoint,
)

log = structlog.get_logger("barp_sidecar.policy.nats_policies")
LATEST_KEY = "latest"


def object_name(version: int, file_name: str) -> str:
    return f"v{version}/{file_name}"


def announcement_bytes(version: PolicyVersion) -> bytes:
    return json.dumps(
        {
            "version": version.version,
            "weights_sha256": version.weights_sha256,
            "arms": list(version.models),  # the published announcement's key
            "size_bytes": version.size_bytes,
        }
    ).encode()


def parse_announcement(data: bytes) -> PolicyVersion:
    """The KV value back as a ``PolicyVersion`` (source "nats"); ValueError when it is not one."""
    try:
        raw = json.loads(data)
        version = PolicyVersion(
            version=int(raw["version"]),
            weights_sha256=str(raw["weights_sha256"]),
            models=tuple(str(a) for a in raw["arms"]),
            size_bytes=int(raw.get("size_bytes", 0)),
            source="nats",
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a policy announcement: {exc}") from exc
    if version.version < 1 or len(version.weights_sha256) != 64:
        raise ValueError("not a policy announcement: bad version or weights_sha256")
    return version


async def ensure_policy_buckets(js: Any, s: EventsSettings) -> tuple[Any, Any]:
    """(object store, key-value bucket), created when absent (replicas as the event stream)."""
    api = importlib.import_module("nats.js.api")
    errors = importlib.import_module("nats.js.errors")
    try:
        objects = await js.object_store(s.policy_object_bucket)
    except errors.NotFoundError:
        objects = await js.create_object_store(
            s.policy_object_bucket,
            config=api.ObjectStoreConfig(bucket=s.policy_object_bucket, replicas=s.stream_replicas),
        )
    try:
        kv = await js.key_value(s.policy_kv_bucket)
    except errors.NotFoundError:
        kv = await js.create_key_value(
            config=api.KeyValueConfig(bucket=s.policy_kv_bucket, history=16, replicas=s.stream_replicas)
        )
    return objects, kv


class PolicyObjectReader:
    """Reads objects of the policy store without a consumer: the object's info (its size, chunk subject
    and SHA-256 digest), then its chunks one by one through the stream's message-get API, which the stream
    leader answers. ``ObjectStore.get`` instead creates an ephemeral consumer, and nats-server 2.9 may
    place it on a cluster node that is down: for tens of seconds after a node dies about every other get
    then times out (tests/e2e/test_cluster_failover_faults_processes.py). Raises nats-py's
    ``NotFoundError`` (no such object) and ``DigestMismatchError`` like ``ObjectStore.get``."""

    def __init__(self, js: Any, objects: Any, bucket: str) -> None:
        self.js = js
        self.objects = objects
        self.bucket = bucket

    async def read(self, name: str, max_bytes: int = MAX_CHECKPOINT_BYTES) -> bytes:
        """The object's bytes; ValueError when it is larger than ``max_bytes`` (nothing is read then)."""
        errors = importlib.import_module("nats.js.errors")
        info = await self.objects.get_info(name)
        size = int(info.size or 0)
        if size > max_bytes:
            raise ValueError(f"{name} is {size} bytes, more than {max_bytes}")
        data, digest, sequence = bytearray(), hashlib.sha256(), 1
        subject = f"$O.{self.bucket}.C.{info.nuid}"
        while len(data) < size:
            chunk = await self.js.get_msg(f"OBJ_{self.bucket}", seq=sequence, subject=subject, next=True)
            data += chunk.data or b""
            digest.update(chunk.data or b"")
            sequence = int(chunk.seq) + 1
        recorded = str(info.digest or "").split("=", 1)[-1]
        if len(data) != size or digest.digest() != base64.urlsafe_b64decode(recorded):
            raise errors.DigestMismatchError
        return bytes(data)


class NatsCheckpointFetcher:
    """The manager's ``CheckpointFetcher`` for the NATS path: downloads a version from the Object Store
    while a ``NatsPolicyWatcher`` session holds the bucket (``bind`` / ``unbind``), verifies it and writes
    it atomically into ``download_root/v{N}``. Between sessions a fetch fails with FETCH_FAILED."""

    def __init__(self, download_root: Path) -> None:
        self.download_root = Path(download_root)
        self._objects: Any = None

    def bind(self, objects: PolicyObjectReader) -> None:
        self._objects = objects

    def unbind(self) -> None:
        self._objects = None

    async def fetch(self, version: int, expected_weights_sha256: str) -> Path:
        """Download ``version`` from the Object Store into ``download_root/v{N}`` (atomic), verified."""
        objects = self._objects
        if objects is None:
            raise CheckpointError(
                f"fetch of v{version}: not connected to the NATS policy store", RejectionReason.FETCH_FAILED
            )
        errors = importlib.import_module("nats.js.errors")
        files: dict[str, bytearray] = {}
        for name in EXPECTED_FILES:
            files[name] = await self._get(objects, version, name, errors)
        for name in named_calibration(files):  # the calibration set the manifest names, if any
            files[name] = await self._get(objects, version, name, errors)
        check_announced_weights(version, files[WEIGHTS_FILE], expected_weights_sha256)
        return await asyncio.to_thread(write_checkpoint, self.download_root, version, files)

    async def _get(self, objects: PolicyObjectReader, version: int, name: str, errors: Any) -> bytearray:
        try:
            return bytearray(await objects.read(object_name(version, name)))
        except errors.NotFoundError as exc:
            if name in EXPECTED_FILES:
                raise NotFound(f"version: policy v{version} is not in the NATS policy store") from exc
            raise CheckpointError(
                f"fetch of v{version}: {name} named by its manifest is missing from the object store",
                RejectionReason.FETCH_FAILED,
            ) from exc
        except errors.DigestMismatchError as exc:
            raise CheckpointError(
                f"fetch of v{version}: {name} digest mismatch in the object store",
                RejectionReason.FETCH_FAILED,
            ) from exc
        except ValueError as exc:
            raise CheckpointError(
                f"fetch of v{version}: larger than {MAX_CHECKPOINT_BYTES} bytes", RejectionReason.FETCH_FAILED
            ) from exc
        except Exception as exc:
            raise CheckpointError(
                f"fetch of v{version} from NATS failed: {exc!r}", RejectionReason.FETCH_FAILED
            ) from exc


class NatsPolicyWatcher(BrokerSessionLoop):
    """Watches KV ``latest`` and installs announced versions through the manager; while connected it
    binds the Object Store to the manager's ``NatsCheckpointFetcher``. ``start()`` / ``close()``."""

    task_name = "nats-policy-watcher"
    log_prefix = "policy_watch"

    def __init__(
        self,
        connector: NatsConnector,
        fetcher: NatsCheckpointFetcher,
        manager: PolicyManager,
        seed: int | None = None,
    ) -> None:
        super().__init__(connector, seed)
        self.fetcher = fetcher
        self.manager = manager
        self.announcements = 0

    def progress(self) -> int:
        return self.announcements

    async def session(self, client: Any) -> None:
        js = client.jetstream(timeout=self.settings.publish_timeout_s)
        objects, kv = await ensure_policy_buckets(js, self.settings)
        self.fetcher.bind(PolicyObjectReader(js, objects, self.settings.policy_object_bucket))
        try:
            watcher = await kv.watch(LATEST_KEY)
            self.set_state("connected", bucket=self.settings.policy_kv_bucket)
            await self._follow(client, watcher)
        finally:
            self.fetcher.unbind()

    async def _follow(self, client: Any, watcher: Any) -> None:
        while True:
            if not client.is_connected:
                raise ConnectionError("the NATS connection closed")
            try:
                entry = await watcher.updates(timeout=1.0)
            except importlib.import_module("nats.errors").TimeoutError:
                # The watch announces a version once: a retryable failure to install it is retried here.
                await self.manager.retry_due()
                continue
            if entry is None or entry.value is None or entry.operation is not None:
                continue  # the end-of-initial-values marker, or a delete/purge
            try:
                announced = parse_announcement(entry.value)
            except ValueError as exc:
                log.error("policy_announcement_unreadable", error=str(exc), revision=entry.revision)
                continue
            self.announcements += 1
            await self.manager.on_announcement(announced)
