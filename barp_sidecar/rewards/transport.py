"""The one reward-event transport interface: what the composition root needs from a publisher.

Two implementations, chosen by ``events.backend``: ``publisher.RewardPublisher`` (``grpc``, the embedded
default: Trainer.PublishRewards) and ``nats_publisher.NatsRewardPublisher`` (``nats``: a JetStream
stream). Both read the spool and nothing else, deliver at least once in spool order, and trim the spool
only on a durable acknowledgement (the trainer's fsync, or JetStream's publish ack). Owns no behaviour.
"""

from __future__ import annotations

from typing import Protocol

from barp_sidecar.rewards.publisher import PublisherCounters


class RewardTransport(Protocol):
    counters: PublisherCounters

    @property
    def connected(self) -> bool:
        """True while a session delivers (drives ``barp_trainer_connected``)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything durable in the spool is acknowledged; False after ``timeout_s``."""
        ...
