"""Pull requests on a JetStream durable consumer, answered into one subscription callback.

nats-py's ``PullSubscription.fetch`` waits for every message with a task of its own (``next_msg``:
``create_task`` + ``wait_for`` + a ``uuid4`` name), which cost the trainer's consumer more than decoding,
validating, storing and acknowledging the events together (profile: docs/learning.md §8). ``PullBatches``
sends the JetStream pull requests itself (``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``, batch +
expiry) to a private inbox whose callback appends the delivered messages to a buffer. One request is
outstanding at a time and the next one is sent as soon as a batch is handed out, so the next batch
streams in while the caller makes the previous one durable.

Owns: the inbox subscription, the requests, the status replies (404/408: the request is over; 409 with
a deleted or push consumer, or any other error status: ``PullFailed``). Does not create the consumer and
never acknowledges a message: acknowledging after the durable step is the caller's.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from barp_sidecar.tasks import wait_event

API_PREFIX = "$JS.API"
STATUS_HEADER = "Status"
DESCRIPTION_HEADER = "Description"
# A request the server never answered (a lost reply during a leader change) is given up after its expiry
# plus this margin and sent again; the messages it still delivers are kept.
LOST_REQUEST_MARGIN_S = 2.0
# How long a partial batch waits for the next message of the same request before it is handed out.
LINGER_S = 0.001


class PullFailed(Exception):
    """The consumer answered a pull request with an error status (deleted, push-based, bad request)."""


class PullBatches:
    """``start()`` / ``close()``; ``next_batch()`` hands out up to ``batch`` delivered messages in order."""

    def __init__(self, client: Any, stream: str, consumer: str, batch: int, expires_s: float) -> None:
        if batch < 1 or expires_s <= 0:
            raise ValueError("batch must be >= 1 and expires_s > 0")
        self.client = client
        self.batch = batch
        self.expires_s = expires_s
        self.requests = 0
        self._subject = f"{API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = ""
        self._subscription: Any = None
        self._buffer: list[Any] = []
        self._arrived = asyncio.Event()
        # Messages the outstanding request may still deliver (0 = no request outstanding).
        self._outstanding = 0
        self._requested_at = 0.0
        self._failure: str | None = None

    @property
    def buffered(self) -> int:
        """Messages delivered and not yet handed out."""
        return len(self._buffer)

    async def start(self) -> None:
        self._inbox = self.client.new_inbox()
        self._subscription = await self.client.subscribe(self._inbox, cb=self._on_message)

    async def close(self) -> None:
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            try:
                await subscription.unsubscribe()
            except Exception:  # a broken connection took the subscription along
                pass

    async def next_batch(self, timeout_s: float) -> list[Any]:
        """Up to ``batch`` messages, waiting up to ``timeout_s`` for the first one; [] when none came.
        Before returning, asks for the next batch (unless enough is buffered already)."""
        if self._subscription is None:
            raise RuntimeError("PullBatches is not started")
        await self._request_if_idle()
        if not self._buffer:
            self._arrived.clear()
            await wait_event(self._arrived, timeout_s)
        # Messages stream in one by one: take what keeps arriving until a batch is full, the request is
        # over or nothing came for LINGER_S (one fsync per batch, not per message).
        while self._buffer and len(self._buffer) < self.batch and self._outstanding:
            before = len(self._buffer)
            await asyncio.sleep(LINGER_S)
            if len(self._buffer) == before:
                break
        if self._failure is not None:
            raise PullFailed(self._failure)
        taken = self._buffer[: self.batch]
        del self._buffer[: self.batch]
        await self._request_if_idle()
        return taken

    async def _request_if_idle(self) -> None:
        now = time.monotonic()
        if self._outstanding and now > self._requested_at + self.expires_s + LOST_REQUEST_MARGIN_S:
            self._outstanding = 0
        wanted = self.batch - len(self._buffer)
        if self._outstanding or wanted <= 0:
            return
        request = {"batch": wanted, "expires": int(self.expires_s * 1e9)}
        self._outstanding = wanted
        self._requested_at = now
        self.requests += 1
        await self.client.publish(self._subject, json.dumps(request).encode(), reply=self._inbox)

    async def _on_message(self, msg: Any) -> None:
        headers = msg.headers or {}
        if not msg.reply and STATUS_HEADER in headers:  # a status reply (stored messages carry $JS.ACK)
            self._on_status(headers[STATUS_HEADER], headers.get(DESCRIPTION_HEADER, ""))
        else:
            self._buffer.append(msg)
            self._outstanding = max(0, self._outstanding - 1)
        self._arrived.set()

    def _on_status(self, status: str, description: str) -> None:
        if status in ("404", "408"):  # no messages / the request expired: it is over
            self._outstanding = 0
        elif status == "100":  # idle heartbeat (not requested, harmless)
            return
        elif status == "409" and not any(
            word in description.lower() for word in ("deleted", "push", "not found")
        ):
            self._outstanding = 0  # leadership change, max waiting, ...: ask again
        else:
            self._failure = f"pull request answered {status} {description}".strip()
