"""The reconnect loop every NATS client of the project runs: one connection at a time, a session on it
until it fails, then the shared jittered backoff (``barp_sidecar/backoff.py``) and again.

Owns the background task (``start`` / ``close``), the connect attempt (``NatsConnector.connect``), closing
a broken connection, the backoff (reset after a session that made progress), the broker state shown in
metrics (``connecting``, ``connected``, ``unreachable``, ``auth_failed``, ``session_failed``) and one log
line per state change (``<log_prefix>_<state>``; ``auth_failed`` and ``session_failed`` are logged at error
level on every attempt). ``unreachable`` means the broker or the way to it failed (no server, the
connection broke, a request went unanswered, JetStream reported itself unavailable); ``session_failed``
means the connection worked but the session did not (the broker refused a request, or this process
failed: a disk error, a bug), so an operator looks at this process's log rather than at NATS. What a
session does belongs to the subclass: the sidecar's event publisher and policy watcher, the trainer's
event consumer and policy mirror.
"""

from __future__ import annotations

import asyncio
import importlib
import random
from abc import ABC, abstractmethod
from typing import Any

import structlog

from barp_sidecar.backoff import ReconnectBackoff
from barp_sidecar.broker.nats_connection import BrokerAuthFailed, BrokerUnavailable, NatsConnector
from barp_sidecar.tasks import cancel_and_wait

log = structlog.get_logger("barp_sidecar.broker.session_loop")
BROKER_STATES = ("connecting", "connected", "unreachable", "auth_failed", "session_failed")
# States logged at error level on every attempt (an operator has to act); the others once per change.
STATES_LOGGED_EVERY_TIME = ("auth_failed", "session_failed")


def session_failure_state(exc: BaseException) -> str:
    """``unreachable`` for a failure of the broker or of the way to it, else ``session_failed``."""
    if isinstance(exc, ConnectionError | TimeoutError | BrokerUnavailable):
        return "unreachable"
    nats_errors = importlib.import_module("nats.errors")
    js_errors = importlib.import_module("nats.js.errors")
    if isinstance(exc, js_errors.ServiceUnavailableError | js_errors.ServerError):
        return "unreachable"  # JetStream answered that it cannot serve now (no leader, a 5xx)
    if isinstance(exc, js_errors.APIError):
        return "session_failed"  # JetStream refused the request (bad request, not found): it works
    return "unreachable" if isinstance(exc, nats_errors.Error) else "session_failed"


class BrokerSessionLoop(ABC):
    """Subclasses implement ``session(client)`` (raise to reconnect, return to stop) and ``progress()``."""

    task_name = "nats-session"
    log_prefix = "event_broker"

    def __init__(self, connector: NatsConnector, seed: int | None = None) -> None:
        s = connector.settings
        self.connector = connector
        self.settings = s
        self.state = "connecting"
        self.sessions = 0
        self.connect_failures = 0
        self.session_failures = 0
        self._backoff = ReconnectBackoff(
            s.reconnect_initial_backoff_s, s.reconnect_max_backoff_s, random.Random(seed)
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.task_name)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    @abstractmethod
    def progress(self) -> int:
        """A count that grows while sessions deliver (a session that moved it resets the backoff)."""

    @abstractmethod
    async def session(self, client: Any) -> None:
        """Use the connection until it fails (raise) or the work is over (return: the loop stops)."""

    def set_state(self, state: str, **fields: Any) -> None:
        changed = state != self.state
        self.state = state
        if state == "connected":
            self.sessions += 1
            log.info(f"{self.log_prefix}_connected", urls=list(self.settings.nats_urls), **fields)
        elif changed or state in STATES_LOGGED_EVERY_TIME:
            level = log.error if state in STATES_LOGGED_EVERY_TIME else log.warning
            level(f"{self.log_prefix}_{state}", urls=list(self.settings.nats_urls), **fields)

    async def _run(self) -> None:
        while True:
            before = self.progress()
            try:
                client = await self.connector.connect()
            except BrokerAuthFailed as exc:
                self.connect_failures += 1
                self.set_state("auth_failed", error=str(exc))
            except BrokerUnavailable as exc:
                self.connect_failures += 1
                self.set_state("unreachable", error=str(exc))
            else:
                try:
                    await self.session(client)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.session_failures += 1
                    # Type and text: a nats-py API error's repr drops the server's code and description.
                    self.set_state(
                        session_failure_state(exc), error=f"{type(exc).__name__}: {exc}", phase="session"
                    )
                finally:
                    if self.state == "connected":
                        self.state = "connecting"
                    await close_quietly(client)
            await asyncio.sleep(self._backoff.next_delay_s(self.progress() > before))


async def close_quietly(client: Any) -> None:
    try:
        async with asyncio.timeout(2.0):
            await client.close()
    except Exception as exc:  # closing a broken connection may fail in many ways; it is gone either way
        log.debug("broker_close_failed", error=repr(exc))
