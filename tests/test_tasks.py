"""cancel_and_wait: stops a background task for good, without hiding real errors or a caller's cancel.
wait_event: a time limit that never loses a cancellation, and the rule that the code uses it."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from barp_sidecar.tasks import cancel_and_wait, wait_event

ROOT = Path(__file__).resolve().parents[1]


async def test_cancels_and_waits_until_the_task_has_finished() -> None:
    cleaned_up = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned_up.set()

    task = asyncio.create_task(forever())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled() and cleaned_up.is_set()
    await cancel_and_wait(None)  # nothing to stop is fine


async def test_a_task_that_already_failed_re_raises_its_error() -> None:
    async def broken() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="boom"):
        await cancel_and_wait(task)


async def test_the_callers_own_cancellation_is_not_swallowed() -> None:
    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.sleep(0.05)  # slow to stop
                raise

    inner = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    closer = asyncio.create_task(cancel_and_wait(inner))
    await asyncio.sleep(0.01)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert closer.cancelled()


async def _cancel_as_the_event_is_set(waiting) -> asyncio.Task[bool]:
    """Start ``waiting(event)``, then set the event and cancel the waiter in the same loop step."""
    event = asyncio.Event()
    task = asyncio.create_task(waiting(event))
    await asyncio.sleep(0)  # the task now waits for the event
    event.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return task


async def test_wait_for_on_this_python_loses_a_cancel_that_races_the_event() -> None:
    """Why the rule exists: the waiter returns normally although it was cancelled (Python 3.11)."""

    async def with_wait_for(event: asyncio.Event) -> bool:
        await asyncio.wait_for(event.wait(), 10)
        return True

    task = await _cancel_as_the_event_is_set(with_wait_for)
    if sys.version_info < (3, 12):  # this project's Python: the cancel is lost
        assert not task.cancelled() and task.result() is True
    else:  # 3.12 rewrote wait_for on asyncio.timeout
        assert task.cancelled()


async def test_wait_event_keeps_a_cancel_that_races_the_event() -> None:
    task = await _cancel_as_the_event_is_set(lambda event: wait_event(event, 10))
    assert task.cancelled()


async def test_wait_event_reports_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True


def test_no_service_code_uses_asyncio_wait_for() -> None:
    """barp_sidecar/ and trainer/ use asyncio.timeout or wait_event (tasks.py says why)."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("barp_sidecar", "trainer")
        for path in sorted((ROOT / package).rglob("*.py"))
        if "/gen/" not in path.as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bwait_for\(", line) and "asyncio" in line
    ]
    assert not offenders, (
        f"asyncio.wait_for loses cancellations on Python 3.11; use asyncio.timeout: {offenders}"
    )
