"""A real in-process sidecar on the NATS backend (no trainer.target) whose broker is down: outcomes count as
delivered towards the trainer (the full spool quota applies, not the kept-without-a-trainer one); the quota
refuses new outcomes with RESOURCE_EXHAUSTED and a metric (nothing already recorded is dropped), routing
keeps working, and everything recorded reaches JetStream once a broker appears.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import nats

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.rewards.event_messages import unpack_message
from tests.support.nats_server import NatsServer, free_port, require_nats_server
from tests.support.sidecar import make_tiny_checkpoint, running_sidecar, sidecar_settings


async def test_spool_quota_reached_while_the_broker_is_down_refuses_with_a_metric(tmp_path):
    require_nats_server()
    port = free_port()
    settings = sidecar_settings(
        make_tiny_checkpoint(tmp_path / "policy"),
        rewards={
            "spool_dir": str(tmp_path / "spool"),
            "spool_max_bytes": 65536,
            "spool_fsync_interval_ms": 1.0,
        },
        trainer={"checkpoint_cache_dir": str(tmp_path / "cache")},
        events={
            "backend": "nats",
            "nats_urls": [f"nats://127.0.0.1:{port}"],
            "reconnect_initial_backoff_s": 0.05,
            "reconnect_max_backoff_s": 0.3,
        },
    )
    broker = NatsServer(tmp_path / "nats-store", port=port)
    async with running_sidecar(settings) as app:
        assert app.learning is not None and app.learning.spool is not None
        spool = app.learning.spool
        recorded: list[str] = []
        refused = 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            for i in range(1000):  # bounded: 64 KiB holds a few hundred tiny events
                decision = await stub.Route(router_pb2.RouteRequest(prompt=f"prompt {i}"), timeout=10)
                try:
                    ack = await stub.ReportOutcome(
                        router_pb2.OutcomeRequest(decision_id=decision.decision_id, quality=0.5), timeout=10
                    )
                    # The stream is a delivery path: not "kept without a trainer" (no trainer.target here).
                    assert ack.delivery == router_pb2.OUTCOME_DELIVERY_TRAINER
                    recorded.append(decision.decision_id)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    refused += 1
                    if refused >= 5:
                        break
            assert refused == 5 and len(recorded) > 50
            assert spool.refused_total == 5 and spool.unacked_events == len(recorded)
            publisher = app.learning.publisher
            assert publisher is not None and not publisher.connected
            broker.start()
            try:
                deadline = time.monotonic() + 30
                while spool.unacked_events:
                    assert time.monotonic() < deadline, "spool not delivered"
                    await asyncio.sleep(0.05)
                client = await nats.connect(broker.url)
                js = client.jetstream()
                info = await js.stream_info(settings.events.stream)
                stored = []
                for sequence in range(1, info.state.last_seq + 1):
                    msg = await js.get_msg(settings.events.stream, sequence)
                    stored += [event.event_id for event in unpack_message(msg.data or b"", msg.headers)]
                await client.close()
                assert len(stored) == len(set(stored)) == len(recorded)
                assert info.state.messages < len(recorded)  # batch messages (events.max_events_per_message)
            finally:
                broker.stop()
