"""Lifecycle helper for the background asyncio tasks that long-lived components own.

Owns one idiom only: stopping a task on ``close()`` — cancel it, wait until it has really finished, and
swallow only the ``CancelledError`` that the cancellation itself produced.
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
