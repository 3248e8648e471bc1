"""The trainer's gRPC server in-process on 127.0.0.1:0, called through real channels.

Covers PublishRewards (durable acks, malformed events rejected by field while the stream continues,
de-duplication), the sidecar's spool + publisher delivering through it, WatchPolicy, FetchPolicy, health,
and a new version being published once enough events arrive.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from barp_sidecar.gen.barp.v1 import trainer_pb2, trainer_pb2_grpc
from barp_sidecar.policy.calibration import CALIBRATION_FILE
from barp_sidecar.policy.checkpoint import load_checkpoint
from barp_sidecar.policy.watcher import fetch_checkpoint
from barp_sidecar.rewards.publisher import RewardPublisher
from barp_sidecar.rewards.spool import RewardSpool
from tests.learning_helpers import DIM, random_event, trainer_settings_yaml
from trainer.service.app import TrainerApp
from trainer.service.settings import load_trainer_settings


@pytest.fixture
async def trainer(tmp_path):
    config = tmp_path / "trainer.yaml"
    config.write_text(trainer_settings_yaml(tmp_path / "data", every_events=64, every_s=0.5))
    app = TrainerApp(load_trainer_settings(config, {}))
    await app.start()
    yield app
    await app.close()


async def test_publish_rewards_acks_durable_sequences_and_rejects_bad_fields(trainer):
    rng = random.Random(1)
    good = [random_event(rng, sequence=i) for i in range(1, 6)]
    bad_dim = random_event(rng, sequence=6)
    del bad_dim.embedding[3:]
    bad_arm = random_event(rng, sequence=7)
    bad_arm.model = "gpt-9"
    bad_zero = random_event(rng, sequence=8)
    bad_zero.propensity = 0.0
    bad_big = random_event(rng, sequence=9)
    bad_big.propensity = 1.5
    last = random_event(rng, sequence=10)
    events = [*good, bad_dim, bad_arm, bad_zero, bad_big, last]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{trainer.port}") as channel:
        stub = trainer_pb2_grpc.TrainerStub(channel)
        call = stub.PublishRewards()
        for event in events:
            await call.write(event)
        await call.done_writing()
        acks = [ack async for ack in call]
    assert acks[-1].durable_sequence == 10
    rejected = dict(
        zip(
            [s for a in acks for s in a.rejected_sequences],
            [r for a in acks for r in a.rejected_reasons],
            strict=True,
        )
    )
    assert set(rejected) == {6, 7, 8, 9}
    assert rejected[6].startswith("embedding:")
    assert rejected[7].startswith("model:")
    assert rejected[8].startswith("propensity:") and rejected[9].startswith("propensity:")
    stored = {e.event_id for _, e in trainer.event_log.read_from(0, 100)}
    assert stored == {e.event_id for e in [*good, last]}


async def test_spool_and_publisher_deliver_every_event_exactly_once(trainer, tmp_path):
    spool = RewardSpool(tmp_path / "spool", 1 << 24, 2.0)
    await spool.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{trainer.port}") as channel:
        publisher = RewardPublisher(spool, channel, initial_backoff_s=0.05, max_backoff_s=0.2, seed=0)
        await publisher.start()
        rng = random.Random(2)
        events = [random_event(rng) for _ in range(300)]
        await asyncio.gather(*(spool.append(e) for e in events))
        # A resend of an already delivered event (as after a sidecar crash) is stored once.
        duplicate = trainer_pb2.RewardEvent()
        duplicate.CopyFrom(events[0])
        await spool.append(duplicate)
        assert await publisher.drain(timeout_s=20)
        await publisher.close()
    await spool.close()
    stored = [e.event_id for _, e in trainer.event_log.read_from(0, 1000)]
    assert sorted(stored) == sorted(e.event_id for e in events)
    assert spool.acked_sequence == 301
    assert trainer.servicer.counters.duplicates == 1


async def test_watch_and_fetch_policy_and_a_new_version_after_enough_events(trainer, tmp_path):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{trainer.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service="barp.v1.Trainer"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = {s.name async for r in replies for s in r.list_services_response.service}
        assert {"barp.v1.Trainer", "grpc.health.v1.Health"} <= services
        stub = trainer_pb2_grpc.TrainerStub(channel)
        watch = stub.WatchPolicy(trainer_pb2.WatchRequest(sidecar_id="t", current_version=0))
        first = await watch.read()
        assert first.version == 1 and len(first.weights_sha256) == 64

        files: dict[str, bytearray] = {}
        digests = {}
        async for chunk in stub.FetchPolicy(trainer_pb2.FetchPolicyRequest(version=1)):
            files.setdefault(chunk.file_name, bytearray()).extend(chunk.data)
            if chunk.file_sha256:
                digests[chunk.file_name] = chunk.file_sha256
        assert set(files) == {"manifest.json", "policy.safetensors"}
        assert hashlib.sha256(files["policy.safetensors"]).hexdigest() == first.weights_sha256
        assert all(hashlib.sha256(files[n]).hexdigest() == d for n, d in digests.items())

        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.FetchPolicy(trainer_pb2.FetchPolicyRequest(version=99)):
                pass
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "version" in info.value.details()

        rng = random.Random(3)
        call = stub.PublishRewards()
        for i in range(1, 801):
            event = random_event(rng, sequence=i)
            event.propensity = 1.0 / 3
            await call.write(event)
        await call.done_writing()
        async for _ in call:
            pass
        second = await asyncio.wait_for(watch.read(), timeout=30)
        assert second.version == 2
        watch.cancel()
        # v2 carries a calibration set of the events' real embeddings; FetchPolicy sends it, the sidecar's
        # fetch verifies and writes it, and the downloaded checkpoint is dry-run on it.
        downloaded = await fetch_checkpoint(channel, 2, second.weights_sha256, tmp_path / "downloads")
        # An older sidecar does not ask for it and gets only the files it knows (rolling upgrades).
        request = trainer_pb2.FetchPolicyRequest(version=2)
        old_style = {chunk.file_name async for chunk in stub.FetchPolicy(request)}
        assert old_style == {"manifest.json", "policy.safetensors"}
    manifest_metrics = trainer.store.path(2) / "manifest.json"
    metrics = json.loads(manifest_metrics.read_text())["metrics"]
    assert metrics["estimator"] == "doubly_robust" and set(metrics["gate_candidate"]) >= {"value", "ci_low"}
    names = sorted(p.name for p in downloaded.iterdir())
    assert names == [CALIBRATION_FILE, "manifest.json", "policy.safetensors"]
    policy = load_checkpoint(downloaded)
    assert policy.calibration is not None and policy.manifest.calibration is not None
    count = policy.manifest.calibration.count
    assert 10 <= count <= 64 and policy.calibration.embeddings.shape == (count, DIM)  # held-out + replay
    rng = random.Random(3)  # the events the test sent, again
    sent = [random_event(rng, sequence=i) for i in range(1, 801)]
    closest = (policy.calibration.embeddings.numpy() @ np.array([e.embedding for e in sent]).T).max(axis=1)
    assert (closest > 1 - 1e-5).all(), "every calibration row is one of the events' embeddings (cosine)"
    sent_weights = {round(e.quality_weight, 3) for e in sent}
    weights = policy.calibration.preference_weights.tolist()
    assert len(weights) == 8 and all(round(w, 3) in sent_weights for w in weights)
