"""Trainer failover on NATS JetStream: the lease keeper, the hand-over of the latest published policy,
and where a new active replica resumes in its own event log.

Owns four things (docs/learning.md §10): ``LeaseKeeper`` (the ``TrainerLease`` on a broker session:
standby polls ``try_acquire``, active renews every TTL/4, ``release`` on a graceful stop; the reconnect
loop is ``broker.session_loop``'s),
``download_latest`` (KV ``latest`` -> the version's manifest, weights, calibration set and learner state
from the Object Store into this replica's checkpoint store and learner-state directory; returns the KV
revision the first fenced pointer update must expect; ``retry_while_held`` retries it through a broker
fail-over), ``resume_offset`` (the offset in this replica's log just after the last event the published
version already includes, by the version's stream sequence) and ``learn_model_list`` (the model list of
a version another replica published, from its manifest in the Object Store, for validating and training
on the events it decided). Every replica keeps its own copy of the stream in its own log (its own
durable consumer), in stream order, so a standby is caught up when it takes over. Wiring (what starts
when the lease is won or lost) belongs to ``app.py``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from barp_sidecar.backoff import ReconnectBackoff
from barp_sidecar.broker.nats_connection import BrokerUnavailable, NatsConnector
from barp_sidecar.broker.session_loop import BrokerSessionLoop
from barp_sidecar.broker.settings import EventsSettings
from barp_sidecar.policy.checkpoint import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    CheckpointStore,
    PolicyManifest,
    sha256_file,
)
from barp_sidecar.policy.nats_policies import (
    LATEST_KEY,
    PolicyObjectReader,
    ensure_policy_buckets,
    object_name,
    parse_announcement,
)
from barp_sidecar.policy.watcher import EXPECTED_FILES, named_calibration, write_checkpoint
from barp_sidecar.tasks import wait_event
from trainer.service.eventlog import EventLog, SegmentedEventLog
from trainer.service.learner_state import state_path
from trainer.service.lease import LeaseRejected, TrainerLease
from trainer.service.model_pool import PoolHistory
from trainer.service.nats_policy_mirror import LEARNER_STATE_OBJECT

log = structlog.get_logger("trainer.service.failover")
T = TypeVar("T")
# JetStream's "wrong last sequence" error codes (a compare-and-set on a KV revision that moved).
WRONG_LAST_SEQUENCE_CODES = (10071, 10164)
# How long a graceful stop waits for the lease's delete before leaving the lease to expire.
RELEASE_TIMEOUT_S = 2.0
# The hand-over's JetStream requests: one lost in a leader election (a node died with the active replica)
# is retried after this long (``retry_while_held``) rather than after events.publish_timeout_s.
HANDOVER_REQUEST_TIMEOUT_S = 2.0


class NatsLeaseKV:
    """nats-py ``KeyValue`` with a wrong-revision write turned into ``LeaseRejected``."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv
        errors = importlib.import_module("nats.js.errors")
        self._wrong, self._api_error = errors.KeyWrongLastSequenceError, errors.APIError
        self._not_found = errors.NotFoundError  # KeyNotFoundError (absent, deleted, purged) and the plain one

    async def create(self, key: str, value: bytes) -> int:
        try:
            return int(await self.kv.create(key, value))
        except self._wrong as exc:
            raise LeaseRejected(str(exc)) from exc

    async def update(self, key: str, value: bytes, last: int) -> int:
        try:
            return int(await self.kv.update(key, value, last=last))
        except self._wrong as exc:
            raise LeaseRejected(str(exc)) from exc

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """(value, revision) of the live entry; None when the key is absent, deleted or expired."""
        try:
            entry = await self.kv.get(key)
        except self._not_found:
            return None
        if entry.value is None:
            return None
        return bytes(entry.value), int(entry.revision)

    async def delete(self, key: str, last: int) -> None:
        try:
            await self.kv.delete(key, last=last)
        except self._api_error as exc:  # nats-py's delete reports a wrong revision as a plain API error
            if exc.err_code in WRONG_LAST_SEQUENCE_CODES:
                raise LeaseRejected(str(exc)) from exc
            raise


async def ensure_lease_bucket(js: Any, bucket: str, ttl_s: float, replicas: int) -> Any:
    """The lease KV bucket (history 1, max age = the lease TTL), created when absent."""
    api = importlib.import_module("nats.js.api")
    errors = importlib.import_module("nats.js.errors")
    try:
        return await js.key_value(bucket)
    except errors.NotFoundError:
        config = api.KeyValueConfig(bucket=bucket, history=1, ttl=ttl_s, replicas=replicas)
        try:
            return await js.create_key_value(config=config)
        except errors.BadRequestError:
            return await js.key_value(bucket)  # the other replica created it meanwhile


class LeaseKeeper(BrokerSessionLoop):
    """Keeps ``lease`` (created here, shared with the app): ``acquired`` is set once it is won; after a
    loss ``lease.held()`` is False for good and the session ends. ``release()`` (graceful stop) deletes
    the lease key on the session's connection and ends the session."""

    task_name = "trainer-lease"
    log_prefix = "trainer_lease_broker"

    def __init__(
        self, connector: NatsConnector, holder: str, bucket: str, ttl_s: float, seed: int | None = None
    ) -> None:
        super().__init__(connector, seed)
        self.bucket = bucket
        self.lease = TrainerLease(None, holder, ttl_s)
        self.acquired = asyncio.Event()
        self.poll_s = min(0.5, ttl_s / 8)
        self._release_requested = asyncio.Event()
        self._released = asyncio.Event()
        self.released = False  # the lease key was deleted by a graceful stop

    def progress(self) -> int:
        return self.lease.acquisitions + self.lease.renewals

    @property
    def request_timeout_s(self) -> float:
        """A lease request waits at most one renewal interval (not ``events.publish_timeout_s``, 5 s by
        default, longer than the lease's local validity of 0.75 × 6 s): a renewal lost in a JetStream
        leader election is then tried again while the lease is still valid."""
        return min(self.settings.publish_timeout_s, self.lease.renew_every_s)

    async def session(self, client: Any) -> None:
        js = client.jetstream(timeout=self.request_timeout_s)
        kv = await ensure_lease_bucket(js, self.bucket, self.lease.ttl_s, self.settings.stream_replicas)
        self.lease.kv = NatsLeaseKV(kv)
        self.set_state("connected", bucket=self.bucket)
        try:
            while not self._release_requested.is_set():
                if not client.is_connected:
                    raise ConnectionError("the NATS connection closed")
                if self.lease.state in ("lost", "released"):
                    return
                if self.lease.state == "standby":
                    if await self._unanswered_is_false(self.lease.try_acquire):
                        self.acquired.set()
                        continue
                    await self._pause(self.poll_s)
                    continue
                await self._pause(self.lease.renew_every_s)
                if not self._release_requested.is_set() and not await self._renew():
                    return
            self.released = await self.lease.release()
        finally:
            if self._release_requested.is_set():
                self._released.set()

    async def _renew(self) -> bool:
        """Renew; a request JetStream did not answer in time is tried again after ``poll_s`` for as long
        as the lease is valid locally (``renew`` then reports the loss). False when the lease is lost."""
        while True:
            try:
                return await self.lease.renew()
            except unanswered_request_errors() as exc:
                log.warning(
                    "trainer_lease_renewal_unanswered", error=type(exc).__name__, retry_in_s=self.poll_s
                )
                await self._pause(self.poll_s)
                if self._release_requested.is_set():
                    return self.lease.held()

    async def _unanswered_is_false(self, attempt: Callable[[], Awaitable[bool]]) -> bool:
        """``attempt()``, with a request JetStream did not answer in time counted as a failed attempt (a
        standby polls again; a create that went through unanswered keeps the key until its TTL)."""
        try:
            return await attempt()
        except unanswered_request_errors() as exc:
            log.warning("trainer_lease_request_unanswered", error=type(exc).__name__)
            return False

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when a release is requested meanwhile."""
        await wait_event(self._release_requested, seconds)

    async def release(self, timeout_s: float = RELEASE_TIMEOUT_S) -> bool:
        """Graceful stop: delete the lease key if this replica holds it (call after training and publishing
        stopped). Waits at most ``timeout_s`` (a broker that does not answer leaves the lease to expire).
        True when the lease was released."""
        self._release_requested.set()
        if not self.lease.held():
            return False  # a standby, or the lease is gone already: nothing to give back
        if not await wait_event(self._released, timeout_s):
            log.warning("trainer_lease_release_timed_out", timeout_s=timeout_s)
        return self.released


def unanswered_request_errors() -> tuple[type[BaseException], ...]:
    """A request on a working connection that got no answer in time, or no responder (a stream leader
    being elected): worth repeating on the same connection. A broken connection is not among them."""
    nats_errors = importlib.import_module("nats.errors")
    js_errors = importlib.import_module("nats.js.errors")
    return (TimeoutError, nats_errors.NoRespondersError, js_errors.ServiceUnavailableError)


def transient_broker_errors() -> tuple[type[BaseException], ...]:
    """What a hand-over retries: no server answered, or JetStream did not answer in time (its meta or
    stream leader was lost with a node and a new one is not elected yet), or the connection broke."""
    nats_errors = importlib.import_module("nats.errors")
    js_errors = importlib.import_module("nats.js.errors")
    return (
        BrokerUnavailable,
        TimeoutError,  # nats.errors.TimeoutError is one
        ConnectionError,
        nats_errors.ConnectionClosedError,
        nats_errors.NoRespondersError,
        nats_errors.StaleConnectionError,
        js_errors.ServiceUnavailableError,
    )


async def retry_while_held(
    operation: Callable[[], Awaitable[T]],
    held: Callable[[], bool],
    backoff: ReconnectBackoff,
    wait_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``operation()``, tried again after a transient broker error (``transient_broker_errors``) with the
    shared backoff while the lease is ``held()``, for up to ``wait_s``. Any other error, the lease lost or
    the time up: the last error is raised (the hand-over fails and the replica stands down)."""
    transient = transient_broker_errors()
    deadline = clock() + wait_s
    attempt = 0
    while True:
        try:
            return await operation()
        except transient as exc:
            attempt += 1
            delay_s = backoff.next_delay_s(made_progress=False)
            if not held() or clock() + delay_s >= deadline:
                raise
            log.warning(
                "trainer_takeover_retrying", error=repr(exc), attempt=attempt, delay_s=round(delay_s, 3)
            )
            await asyncio.sleep(delay_s)


async def _object_bytes(objects: PolicyObjectReader, version: int, name: str) -> bytes:
    return await objects.read(object_name(version, name))


async def download_latest(
    connector: NatsConnector, store: CheckpointStore, state_dir: Path
) -> tuple[int | None, int]:
    """(latest announced version or None, KV revision of ``latest`` or 0). The version's checkpoint and
    learner state land in ``store`` (LATEST set to it) and ``state_dir`` unless already there."""
    errors = importlib.import_module("nats.js.errors")
    s: EventsSettings = connector.settings
    client = await connector.connect()
    try:
        js = client.jetstream(timeout=min(s.publish_timeout_s, HANDOVER_REQUEST_TIMEOUT_S))
        bucket, kv = await ensure_policy_buckets(js, s)
        objects = PolicyObjectReader(js, bucket, s.policy_object_bucket)
        try:
            entry = await kv.get(LATEST_KEY)
        except errors.KeyNotFoundError:
            return None, 0
        announced = parse_announcement(entry.value or b"")
        version = announced.version
        local = store.path(version) / WEIGHTS_FILE
        if not (local.is_file() and sha256_file(local) == announced.weights_sha256):
            files = {name: bytearray(await _object_bytes(objects, version, name)) for name in EXPECTED_FILES}
            for name in named_calibration(files):
                files[name] = bytearray(await _object_bytes(objects, version, name))
            await asyncio.to_thread(write_checkpoint, store.root, version, files)
        try:
            state = await _object_bytes(objects, version, LEARNER_STATE_OBJECT)
        except errors.NotFoundError:
            log.warning("learner_state_not_in_object_store", version=version)
        else:
            await asyncio.to_thread(_write_atomically, state_path(state_dir, version), state)
        await asyncio.to_thread(store.set_latest, version)
        return version, int(entry.revision or 0)
    finally:
        await client.close()


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.download")
    temp.write_bytes(data)
    temp.replace(path)


def find_event_offset(event_log: EventLog, event_id: str, hint: int, chunk: int = 4096) -> int | None:
    """The offset of ``event_id`` in ``event_log`` (``hint`` checked first, then a scan), or None."""
    if hint >= 0:
        near = event_log.read_from(hint, 1)
        if near and near[0][0] == hint and near[0][1].event_id == event_id:
            return hint
    offset = 0
    while True:
        records = event_log.read_from(offset, chunk)
        if not records:
            return None
        for position, event in records:
            if event.event_id == event_id:
                return position
        offset = records[-1][0] + 1


async def resume_offset(
    event_log: SegmentedEventLog,
    manifest: PolicyManifest,
    wait_s: float,
    clock: Any = time.monotonic,
    reached: Callable[[], int] | None = None,
) -> int:
    """Where training resumes in this replica's log: just after the last event the published version
    includes, waiting up to ``wait_s`` for the ingestor to bring it in. By stream position
    (``training.stream_sequence``: every replica's log follows the stream's order, so the events after
    it are exactly the ones the version has not seen; within a batch message, after
    ``training.last_event_id``); a manifest without one (written before stream
    positions were recorded) or of another incarnation of the stream (``training.stream``: deleted and
    recreated since) by ``training.last_event_id``. A version that includes no event resumes at 0.
    ``reached()``: the stream sequence this replica's consumer has handled (stored or dead-lettered;
    default: the log's newest). RuntimeError when the position is never reached."""
    deadline = clock() + wait_s
    sequence = int(manifest.training.get("stream_sequence", 0) or 0)
    if sequence > 0:
        # A consumer that has not connected yet (a fresh replica) does not know its stream: wait for it
        # (the log is written from worker threads: polled).
        while not event_log.stream_identity and clock() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        if manifest.training.get("stream") == event_log.stream_identity:
            handled = reached or (lambda: event_log.last_stream_sequence)
            left_s = max(0.0, deadline - clock())
            last_event_id = str(manifest.training.get("last_event_id", ""))
            return await _offset_after_sequence(
                event_log, manifest.version, (sequence, last_event_id), left_s, clock, handled
            )
    event_id = str(manifest.training.get("last_event_id", ""))
    if not event_id:
        return 0
    hint = int(manifest.training.get("log_offset", 0)) - 1
    while True:
        found = await asyncio.to_thread(find_event_offset, event_log, event_id, hint)
        if found is not None:
            return found + 1
        if clock() >= deadline:
            raise RuntimeError(
                f"v{manifest.version}'s last trained event {event_id!r} is not in this replica's log "
                f"after {wait_s:.0f} s (retention shorter than the stream's?)"
            )
        await asyncio.sleep(0.2)


async def _offset_after_sequence(
    event_log: SegmentedEventLog,
    version: int,
    position: tuple[int, str],
    wait_s: float,
    clock: Any,
    reached: Callable[[], int],
) -> int:
    """Just after (stream sequence, last event id): a batch message holds several events, all with its
    sequence; a version may have been trained on part of one."""
    sequence, last_event_id = position
    deadline = clock() + wait_s
    while reached() < sequence:
        if clock() >= deadline:
            raise RuntimeError(
                f"v{version} ends at stream sequence {sequence}: this replica's consumer reached only "
                f"{reached()} after {wait_s:.0f} s"
            )
        await asyncio.sleep(0.2)
    offset = await asyncio.to_thread(event_log.offset_after_stream_sequence, sequence, last_event_id)
    if offset is None:
        raise RuntimeError(
            f"v{version} ends at stream sequence {sequence}: this replica's log starts after it "
            "(retention shorter than the stream's?)"
        )
    return offset


async def learn_model_list(history: PoolHistory, settings: EventsSettings, js: Any, version: int) -> bool:
    """Record in ``history`` the model list ``version`` was published with, read from its manifest in the
    Object Store: for events decided by a version this replica neither published nor downloaded (a
    standby after the active changed the model pool; a new active for its predecessor's versions). False
    (remembered, not asked again) when the Object Store has no readable manifest of it."""
    errors = importlib.import_module("nats.js.errors")
    bucket, _ = await ensure_policy_buckets(js, settings)
    objects = PolicyObjectReader(js, bucket, settings.policy_object_bucket)
    try:
        data = await _object_bytes(objects, version, MANIFEST_FILE)
        manifest = PolicyManifest.from_json(json.loads(data), object_name(version, MANIFEST_FILE))
    except (errors.NotFoundError, CheckpointError, ValueError) as exc:
        history.mark_unknowable(version)
        log.warning("model_list_unknown", version=version, error=str(exc)[:200])
        return False
    history.record(version, manifest.models)
    log.info("model_list_learned", version=version, models=list(manifest.models))
    return True
