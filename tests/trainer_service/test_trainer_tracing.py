"""The trainer's ingest and publish spans, captured with an in-memory exporter from a real trainer server."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from barp_sidecar.gen.barp.v1 import trainer_pb2, trainer_pb2_grpc
from tests.learning_helpers import random_event, trainer_settings_yaml
from trainer.service.app import TrainerApp
from trainer.service.settings import load_trainer_settings


async def test_ingest_and_publish_spans(tmp_path: Path) -> None:
    config = tmp_path / "trainer.yaml"
    config.write_text(trainer_settings_yaml(tmp_path / "data", every_events=64, every_s=0.5))
    settings = load_trainer_settings(config, {"BARP_TRAINER__TRACING__ENABLED": "true"})
    assert settings.tracing.enabled and settings.tracing.service_name == "barp-trainer"
    exporter = InMemorySpanExporter()
    app = TrainerApp(settings, span_exporter=exporter)
    await app.start()
    try:
        rng = random.Random(3)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = trainer_pb2_grpc.TrainerStub(channel)
            watch = stub.WatchPolicy(trainer_pb2.WatchRequest(sidecar_id="t", current_version=0))
            assert (await watch.read()).version == 1
            call = stub.PublishRewards()
            for i in range(1, 801):
                event = random_event(rng, sequence=i)
                event.propensity = 1.0 / 3
                await call.write(event)
            await call.done_writing()
            acks = [ack async for ack in call]
            assert (await asyncio.wait_for(watch.read(), timeout=30)).version == 2
            watch.cancel()
    finally:
        await app.close()
    spans = exporter.get_finished_spans()
    ingests = [s for s in spans if s.name == "barp.trainer.ingest"]
    assert len(ingests) == len(acks)
    assert sum(dict(s.attributes or {})["barp.events"] for s in ingests) == 800
    published = [dict(s.attributes or {}) for s in spans if s.name == "barp.trainer.publish"]
    assert any(a["barp.published"] and a["barp.version"] == 2 for a in published)
