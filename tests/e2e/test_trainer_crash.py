"""kill -9 the trainer while a publisher streams, restart it: every event is in the log exactly once."""

from __future__ import annotations

import asyncio
import random

import grpc

from barp_sidecar.rewards.publisher import RewardPublisher
from barp_sidecar.rewards.spool import RewardSpool
from tests.e2e.learning_processes import TrainerProcess, free_port
from tests.learning_helpers import random_event, trainer_settings_yaml
from trainer.service.eventlog import SegmentedEventLog


async def test_trainer_kill9_and_restart_loses_and_duplicates_nothing(tmp_path):
    config = tmp_path / "trainer.yaml"
    config.write_text(trainer_settings_yaml(tmp_path / "data", every_events=500))
    trainer = TrainerProcess(config, free_port(), tmp_path / "trainer.log")
    await asyncio.to_thread(trainer.start)
    spool = RewardSpool(tmp_path / "spool", 1 << 26, 2.0, segment_max_bytes=1 << 16)
    await spool.start()
    rng = random.Random(7)
    events = [random_event(rng) for _ in range(1500)]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{trainer.port}") as channel:
            publisher = RewardPublisher(spool, channel, initial_backoff_s=0.05, max_backoff_s=0.3, seed=1)
            await publisher.start()
            for start in range(0, 500, 50):
                await asyncio.gather(*(spool.append(e) for e in events[start : start + 50]))
            # Kill while events are streaming.
            appending = asyncio.gather(*(spool.append(e) for e in events[500:1000]))
            await asyncio.sleep(0.05)
            await asyncio.to_thread(trainer.kill)
            await appending
            acked_at_kill = spool.acked_sequence
            for start in range(1000, 1500, 50):  # the trainer is down: recording continues into the spool
                await asyncio.gather(*(spool.append(e) for e in events[start : start + 50]))
            assert spool.acked_sequence == acked_at_kill
            await asyncio.to_thread(trainer.start)
            assert await publisher.drain(timeout_s=60)
            await publisher.close()
    finally:
        await spool.close()
        await asyncio.to_thread(trainer.stop)
    log = SegmentedEventLog(tmp_path / "data" / "events").open()
    stored = [e.event_id for _, e in log.read_from(0, 10_000)]
    log.close()
    assert len(stored) == len(events)
    assert sorted(stored) == sorted(e.event_id for e in events)
