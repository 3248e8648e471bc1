"""Lifecycle helpers for the background asyncio tasks that long-lived components own.

Owns two idioms: stopping a task on ``close()`` (cancel it, wait until it has really finished, and
swallow only the ``CancelledError`` that the cancellation itself produced), and waiting for an event
with a time limit without ever losing a cancellation (``wait_event``).

Time limits in this project use ``asyncio.timeout``, never ``asyncio.wait_for``: on Python 3.11,
``wait_for`` returns the inner result when the awaited thing completes in the same loop step as a
cancellation of the waiting task, so the cancellation is lost. A background loop that loses it never
ends, and its ``close()`` waits forever (seen: a NATS consumer whose message arrived as it was being
closed). ``tests/test_tasks.py`` pins both the race and the rule.
"""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait for it to finish; other exceptions propagate."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        # Re-raise when the caller itself is being cancelled rather than the task we cancelled.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` passed: whether it is set. A cancellation of the
    caller always propagates, also when the event is set in the same loop step."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
