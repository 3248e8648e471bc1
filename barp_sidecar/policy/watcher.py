"""Hot-swap sources: follow the trainer's WatchPolicy stream, or poll a checkpoint directory's LATEST.

Owns the connection side of hot swap: ``TrainerPolicyWatcher`` keeps a Trainer.WatchPolicy stream open
(reconnecting with jittered exponential backoff), turns announcements into ``PolicyManager`` calls (the
stream announces a version once, so a retryable failure to install it is retried while the stream is
idle: ``PolicyManager.retry_due``), and downloads checkpoints with Trainer.FetchPolicy into a local
directory, checking every file's sha256 and the announced weights sha256 (no shared volume needed).
``DirectoryPolicyWatcher`` does the same from a ``CheckpointStore`` on a shared volume. Validation and
the swap itself belong to ``PolicyManager`` (off the event loop, between batches).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import grpc
import structlog

from barp_sidecar.backoff import ReconnectBackoff
from barp_sidecar.errors import CheckpointError, NotFound, RejectionReason
from barp_sidecar.gen.barp.v1 import trainer_pb2, trainer_pb2_grpc
from barp_sidecar.policy.calibration import CALIBRATION_FILE
from barp_sidecar.policy.checkpoint import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    CheckpointStore,
    read_manifest,
    version_dir_name,
)
from barp_sidecar.policy.manager import PolicyManager
from barp_sidecar.policy.version import PolicyVersion
from barp_sidecar.tasks import cancel_and_wait

FETCH_FAILED = RejectionReason.FETCH_FAILED
log = structlog.get_logger("barp_sidecar.policy.watcher")
EXPECTED_FILES = (MANIFEST_FILE, WEIGHTS_FILE)
# Sent when the checkpoint has one (required then: the manifest names it); older checkpoints have none.
OPTIONAL_FILES = (CALIBRATION_FILE,)
# A checkpoint bigger than this is refused while downloading (protects the disk from a bad peer).
MAX_CHECKPOINT_BYTES = 1 << 30


async def fetch_checkpoint(
    channel: grpc.aio.Channel, version: int, expected_weights_sha256: str, download_root: Path
) -> Path:
    """Download ``version`` with FetchPolicy into ``download_root/v{N}`` (atomic rename), verified.

    Raises NotFound when the trainer does not have it and CheckpointError for anything corrupt
    (per-file sha256, announced weights sha256, missing files, out-of-order chunks).
    """
    stub = trainer_pb2_grpc.TrainerStub(channel)
    files: dict[str, bytearray] = {}
    verified: set[str] = set()
    total = 0
    try:
        async for chunk in stub.FetchPolicy(
            trainer_pb2.FetchPolicyRequest(version=version, include_calibration=True)
        ):
            name = chunk.file_name
            if name not in EXPECTED_FILES + OPTIONAL_FILES:
                raise CheckpointError(f"fetch of v{version}: unexpected file {name!r}", FETCH_FAILED)
            data = files.setdefault(name, bytearray())
            if chunk.offset != len(data):
                raise CheckpointError(
                    f"fetch of v{version}: {name} chunk at {chunk.offset}, expected {len(data)}", FETCH_FAILED
                )
            total += len(chunk.data)
            if total > MAX_CHECKPOINT_BYTES:
                raise CheckpointError(
                    f"fetch of v{version}: larger than {MAX_CHECKPOINT_BYTES} bytes", FETCH_FAILED
                )
            data.extend(chunk.data)
            if chunk.file_sha256:
                actual = hashlib.sha256(data).hexdigest()
                if actual != chunk.file_sha256:
                    raise CheckpointError(
                        f"fetch of v{version}: {name} sha256 mismatch (sent {chunk.file_sha256[:12]}…, "
                        f"received {actual[:12]}…)",
                        FETCH_FAILED,
                    )
                verified.add(name)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            raise NotFound(f"version: policy v{version} is not published by the trainer") from exc
        raise CheckpointError(
            f"fetch of v{version} failed: {exc.code().name} {exc.details()}", FETCH_FAILED
        ) from exc
    missing = [n for n in EXPECTED_FILES + named_calibration(files) if n not in verified]
    if missing:
        raise CheckpointError(
            f"fetch of v{version}: incomplete, missing or unverified {missing}", FETCH_FAILED
        )
    check_announced_weights(version, files[WEIGHTS_FILE], expected_weights_sha256)
    return await asyncio.to_thread(write_checkpoint, download_root, version, files)


def check_announced_weights(version: int, weights: bytes | bytearray, expected_sha256: str) -> None:
    """The downloaded weights are the announced ones (any transport); CheckpointError SHA256_MISMATCH."""
    weights_sha = hashlib.sha256(weights).hexdigest()
    if expected_sha256 and weights_sha != expected_sha256:
        raise CheckpointError(
            f"fetch of v{version}: weights sha256 {weights_sha[:12]}… differs from the announced "
            f"{expected_sha256[:12]}…",
            RejectionReason.SHA256_MISMATCH,
        )


def named_calibration(files: dict[str, bytearray]) -> tuple[str, ...]:
    """The calibration file the received manifest names (load_checkpoint reports a malformed manifest)."""
    try:
        entry = json.loads(bytes(files.get(MANIFEST_FILE, b""))).get("calibration")
    except (ValueError, AttributeError):
        return ()
    return (CALIBRATION_FILE,) if entry is not None else ()


def write_checkpoint(download_root: Path, version: int, files: dict[str, bytearray]) -> Path:
    """Write into a staging directory, fsync, and rename into place (replacing an older download)."""
    download_root.mkdir(parents=True, exist_ok=True)
    final = download_root / version_dir_name(version)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=download_root))
    try:
        for name, data in files.items():
            with open(staging / name, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        return final
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


class TrainerCheckpointFetcher:
    """The manager's ``CheckpointFetcher`` over Trainer.FetchPolicy: verified downloads to ``download_root``.

    ``channel`` returns the trainer channel when a fetch starts (it is opened once the event loop runs,
    after the manager that holds this fetcher was built)."""

    def __init__(self, channel: Callable[[], grpc.aio.Channel], download_root: Path) -> None:
        self._channel = channel
        self.download_root = Path(download_root)

    async def __call__(self, version: int, expected_sha256: str) -> Path:
        return await fetch_checkpoint(self._channel(), version, expected_sha256, self.download_root)


# How often an idle watcher asks the manager whether a failed install is due for a retry (the manager's
# own backoff, 0.5 s doubling to 30 s, decides when one actually happens).
RETRY_CHECK_INTERVAL_S = 0.5


class TrainerPolicyWatcher:
    """Follows Trainer.WatchPolicy and installs announced versions through the manager (which fetches them
    with its own ``CheckpointFetcher``). A version whose install failed for a passing reason (the fetch
    broke off, files not there yet) is tried again after the manager's backoff, without waiting for the
    next announcement."""

    def __init__(
        self,
        manager: PolicyManager,
        channel: grpc.aio.Channel,
        sidecar_id: str,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        seed: int | None = None,
    ) -> None:
        self.manager = manager
        self.channel = channel
        self.sidecar_id = sidecar_id
        self.connected = False
        self.reconnects = 0
        self._backoff = ReconnectBackoff(initial_backoff_s, max_backoff_s, random.Random(seed))
        self._task: asyncio.Task[None] | None = None
        self._retry_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="policy-watcher")
        self._retry_task = loop.create_task(self._retry_failed(), name="policy-watcher-retry")

    async def close(self) -> None:
        await cancel_and_wait(self._retry_task)
        await cancel_and_wait(self._task)
        self._task = self._retry_task = None

    async def _retry_failed(self) -> None:
        """Re-try the latest announced version once its retryable rejection's backoff is over (the
        manager's lock keeps this and a new announcement from installing at the same time)."""
        while True:
            await asyncio.sleep(RETRY_CHECK_INTERVAL_S)
            try:
                await self.manager.retry_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("policy_retry_failed")

    async def _run(self) -> None:
        stub = trainer_pb2_grpc.TrainerStub(self.channel)
        while True:
            announced = 0
            try:
                call = stub.WatchPolicy(
                    trainer_pb2.WatchRequest(
                        sidecar_id=self.sidecar_id, current_version=self.manager.current().version
                    )
                )
                async for announcement in call:
                    if not self.connected:
                        self.connected = True
                        log.info("policy_watch_connected", version=announcement.version)
                    announced += 1
                    await self.manager.on_announcement(
                        PolicyVersion(
                            version=announcement.version,
                            weights_sha256=announcement.weights_sha256,
                            models=tuple(announcement.arms),  # trainer.proto field name
                            source="trainer",
                        )
                    )
                raise ConnectionError("WatchPolicy stream ended")
            except asyncio.CancelledError:
                raise
            except (grpc.aio.AioRpcError, ConnectionError) as exc:
                detail = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                log.warning("policy_watch_disconnected", error=detail)
            except Exception:
                log.exception("policy_watch_failed")
            self.connected = False
            self.reconnects += 1
            await asyncio.sleep(self._backoff.next_delay_s(made_progress=announced > 0))


class DirectoryPolicyWatcher:
    """Polls a ``CheckpointStore``'s LATEST (shared volume) and installs new versions through the manager."""

    def __init__(self, manager: PolicyManager, store_root: Path, poll_interval_s: float = 2.0) -> None:
        self.manager = manager
        self.store = CheckpointStore(store_root)
        self.poll_interval_s = poll_interval_s
        self._seen: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        # The files as they were when reading them last failed: not read (nor logged) again until they change.
        self._failed_signature: tuple[tuple[str, int, int], ...] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="policy-dir-watcher")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def _describe(self, version: int) -> PolicyVersion:
        directory = self.store.path(version)
        manifest = read_manifest(directory)
        return PolicyVersion.of(manifest, source=str(directory), directory=directory)

    def _signature(self) -> tuple[tuple[str, int, int], ...]:
        """What a poll reads: LATEST and the manifest it names, by (path, mtime_ns, size)."""
        paths = [self.store.root / "LATEST"]
        try:
            latest = self.store.latest_version()
        except (CheckpointError, OSError):
            latest = None
        if latest is not None:
            paths.append(self.store.path(latest) / MANIFEST_FILE)
        signature = []
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                signature.append((str(path), -1, -1))
            else:
                signature.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(signature)

    async def poll_once(self) -> bool:
        """Register every version in the store (PinPolicy can roll back to them) and install LATEST if it
        differs from what is serving; True when swapped. An unreadable LATEST or manifest is rejected once
        (logged, counted) and not read again until one of those files changes."""
        signature = await asyncio.to_thread(self._signature)
        if signature == self._failed_signature:
            return False
        latest: int | None = None
        try:
            latest = await asyncio.to_thread(self.store.latest_version)
            for version in await asyncio.to_thread(self.store.versions):
                if version not in self._seen and version != latest:
                    try:
                        self.manager.add_available(await asyncio.to_thread(self._describe, version))
                    except CheckpointError as exc:
                        log.warning("policy_directory_version_unreadable", version=version, error=str(exc))
                    self._seen.add(version)
            if latest is None:
                return False
            announced = await asyncio.to_thread(self._describe, latest)
        except CheckpointError as exc:
            self._failed_signature = signature
            self.manager.record_rejection(latest or 0, exc.reason, str(exc))
            return False
        except (OSError, json.JSONDecodeError) as exc:
            self._failed_signature = signature
            log.error("policy_directory_unreadable", root=str(self.store.root), error=str(exc))
            return False
        self._failed_signature = None
        return await self.manager.on_announcement(announced)

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.poll_interval_s)
