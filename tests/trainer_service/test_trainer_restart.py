"""The trainer resumes from its LATEST checkpoint and the log offset recorded in it.

The gate is made to publish deterministically (a margin no SNIPS difference can exceed: rewards lie in
[-1, 1]), so the test does not depend on the gate's verdict on random events; the deadlines only bound a
wait for work that is certain to happen.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import grpc

from barp_sidecar.gen.barp.v1 import trainer_pb2_grpc
from tests.learning_helpers import random_event, trainer_settings_yaml
from trainer.service.app import TrainerApp
from trainer.service.settings import load_trainer_settings


async def publish(port: int, events) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = trainer_pb2_grpc.TrainerStub(channel).PublishRewards()
        for event in events:
            await call.write(event)
        await call.done_writing()
        async for _ in call:
            pass


async def test_restart_resumes_from_latest_and_its_log_offset(tmp_path):
    config = tmp_path / "trainer.yaml"
    # gate_margin 10 > any SNIPS gap (rewards are in [-1, 1]): the first evaluation always publishes v2.
    config.write_text(trainer_settings_yaml(tmp_path / "data", every_events=100, every_s=600, gate_margin=10))
    settings = load_trainer_settings(config, {})
    rng = random.Random(1)
    app = TrainerApp(settings)
    await app.start()
    try:
        await publish(app.port, [random_event(rng, sequence=i) for i in range(1, 301)])
        deadline = asyncio.get_running_loop().time() + 120
        while app.loop.current_version < 2:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
    finally:
        await app.close()
    # Read after close: the loop may publish again (every 100 events) between the wait and the close.
    published = app.loop.manifest
    assert published.version >= 2 and app.loop.counters.rejected == 0
    offset = published.training["log_offset"]
    assert 0 < offset <= 300 and published.parent_version is not None
    # The learner's statistics were saved with the published version (docs/learning.md §4.3).
    assert (settings.checkpoints_dir.parent / "learner-state" / f"v{published.version}.safetensors").is_file()

    restarted = TrainerApp(settings)
    await restarted.start()
    try:
        # Started from LATEST (= the last version published before the restart); a resumed learner with
        # its held-out slice restored may publish the next version at once, hence >=.
        assert restarted.loop._starting_source == "latest"
        assert restarted.loop.manifest.version >= published.version == app.loop.manifest.version
        # Resumed, not restarted: the learner already holds everything trained before the offset.
        assert restarted.loop.learner.events_trained >= published.training["events_trained"]
        # Events after the published offset are replayed into training; nothing is re-stored.
        assert restarted.event_log.end_offset == 300
        deadline = asyncio.get_running_loop().time() + 120
        while restarted.loop.cursor < 300:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
    finally:
        await restarted.close()


async def test_close_waits_for_the_training_step_in_flight(tmp_path):
    """A step runs in a worker thread; close() must not return while it may still read or publish."""
    config = tmp_path / "trainer.yaml"
    config.write_text(trainer_settings_yaml(tmp_path / "data"))
    app = TrainerApp(load_trainer_settings(config, {}))
    await app.start()
    entered, finished = threading.Event(), threading.Event()

    def slow_step() -> dict:
        entered.set()
        time.sleep(0.5)
        finished.set()
        return {"events": 0, "published": None}

    try:
        app.loop.step = slow_step
        assert await asyncio.to_thread(entered.wait, 30)
    finally:
        await app.close()
    assert finished.is_set()
