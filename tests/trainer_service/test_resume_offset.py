"""Where a trainer replica resumes another's published version in its own log (failover.resume_offset):
by ``training.stream_sequence`` within the same stream incarnation, after waiting for a consumer that has
not connected or caught up yet; by ``training.last_event_id`` for an older manifest or another
incarnation; a position never reached is an error naming it."""

from __future__ import annotations

import asyncio
import random

import pytest

from barp_sidecar.policy.checkpoint import PolicyManifest
from tests.learning_helpers import random_event, tiny_manifest, tiny_network
from trainer.service.eventlog import SegmentedEventLog
from trainer.service.failover import resume_offset

STREAM = "BARP_EVENTS@2026-12-05T10:00:00+00:00"


def manifest_with(**training: object) -> PolicyManifest:
    manifest = tiny_manifest(3, tiny_network())
    manifest.training.update(training)
    return manifest


def append_from_stream(log: SegmentedEventLog, rng: random.Random, sequences: list[int]) -> list[str]:
    events = []
    for sequence in sequences:
        event = random_event(rng)
        event.stream_sequence = sequence
        events.append(event)
    log.append(events)
    return [e.event_id for e in events]


async def test_resumes_by_stream_sequence_once_the_consumer_connected_and_reached_it(tmp_path):
    rng = random.Random(1)
    log = SegmentedEventLog(tmp_path).open()
    manifest = manifest_with(stream=STREAM, stream_sequence=6, last_event_id="not-used", log_offset=99)

    async def consumer_catches_up() -> None:
        await asyncio.sleep(0.3)  # connects: learns its stream ...
        log.set_stream_identity(STREAM)
        append_from_stream(log, rng, [1, 2, 4])
        await asyncio.sleep(0.3)  # ... and stores up to and beyond the version's position
        append_from_stream(log, rng, [6, 7, 9])

    feeding = asyncio.ensure_future(consumer_catches_up())
    try:
        assert await resume_offset(log, manifest, wait_s=10.0) == 4  # just after sequence 6
    finally:
        await feeding
        log.close()


async def test_another_stream_incarnation_or_an_old_manifest_resumes_by_event_id(tmp_path):
    rng = random.Random(2)
    log = SegmentedEventLog(tmp_path).open()
    log.set_stream_identity(STREAM)
    ids = append_from_stream(log, rng, [1, 2, 3, 4])
    try:
        recreated = manifest_with(stream="BARP_EVENTS@earlier", stream_sequence=4, last_event_id=ids[1])
        assert await resume_offset(log, recreated, wait_s=1.0) == 2
        old = manifest_with(last_event_id=ids[2], log_offset=3)
        assert await resume_offset(log, old, wait_s=1.0) == 3
        assert await resume_offset(log, manifest_with(), wait_s=1.0) == 0  # a version with no event
    finally:
        log.close()


async def test_a_position_the_consumer_never_reaches_is_an_error(tmp_path):
    rng = random.Random(3)
    log = SegmentedEventLog(tmp_path).open()
    log.set_stream_identity(STREAM)
    append_from_stream(log, rng, [1, 2])
    try:
        with pytest.raises(
            RuntimeError, match="ends at stream sequence 5: this replica's consumer reached only 2"
        ):
            await resume_offset(log, manifest_with(stream=STREAM, stream_sequence=5), wait_s=0.5)
        # The consumer's handled position counts dead-lettered messages too (``reached``).
        assert (
            await resume_offset(log, manifest_with(stream=STREAM, stream_sequence=5), 0.5, reached=lambda: 5)
            == 2
        )
    finally:
        log.close()
