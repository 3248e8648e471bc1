"""MicroBatcher: batch formation, admission, cancellation, deadlines, failures, shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest

from barp_sidecar.batching.batcher import MicroBatcher
from barp_sidecar.errors import DeadlineExceeded, ResourceExhausted, Unavailable


class RecordingProcess:
    """Doubles each item; records batches and the threads they ran on; can block until released."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[int] = set()
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(timeout=10)
        self.batches.append(list(items))
        self.threads.add(threading.get_ident())
        return [item * 2 for item in items]


class FakeClock:
    """An injectable monotonic clock that moves only when a test moves it."""

    def __init__(self, now_s: float = 1000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


class CountingObserver:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.rejected = 0
        self.expired = 0

    def batch_done(self, size, queue_waits_s, run_s) -> None:
        assert len(queue_waits_s) == size and run_s >= 0
        self.sizes.append(size)

    def admission_rejected(self) -> None:
        self.rejected += 1

    def expired_in_queue(self) -> None:
        self.expired += 1


def make(process, **kwargs) -> MicroBatcher:
    options = {"max_batch_size": 8, "max_wait_ms": 0.0, "max_pending": 100}
    options.update(kwargs)
    return MicroBatcher(process, **options)


async def test_concurrent_submissions_are_batched_and_each_gets_its_own_answer() -> None:
    process = RecordingProcess()
    observer = CountingObserver()
    batcher = make(process, observer=observer)
    batcher.start()
    futures = [batcher.submit(i) for i in range(20)]
    assert await asyncio.gather(*futures) == [2 * i for i in range(20)]
    await batcher.close()
    assert sorted(x for batch in process.batches for x in batch) == list(range(20))
    assert max(len(batch) for batch in process.batches) == 8
    assert len(process.batches) == 3
    assert observer.sizes == [8, 8, 4]
    assert len(process.threads) == 1 and threading.get_ident() not in process.threads
    assert batcher.pending == 0


async def test_unbatched_mode_runs_one_item_per_batch() -> None:
    process = RecordingProcess()
    batcher = make(process, max_batch_size=1)
    batcher.start()
    assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == [0, 2, 4, 6, 8]
    await batcher.close()
    assert process.batches == [[0], [1], [2], [3], [4]]


async def test_an_idle_worker_takes_a_lone_request_at_once_even_after_a_big_batch() -> None:
    """Continuous batching: no wait while the worker is idle (the clock never moves: no window can pass)."""
    clock = FakeClock()
    process = RecordingProcess()
    batcher = make(process, clock=clock)
    batcher.start()
    assert await asyncio.gather(*(batcher.submit(i) for i in range(3))) == [0, 2, 4]
    for value in (10, 11):
        assert await asyncio.wait_for(batcher.submit(value), 10) == 2 * value
    await batcher.close()
    assert process.batches == [[0, 1, 2], [10], [11]]


async def test_requests_arriving_while_a_batch_runs_form_the_next_batch() -> None:
    gate = threading.Event()
    process = RecordingProcess(gate)
    batcher = make(process, clock=FakeClock())
    batcher.start()
    first = batcher.submit(0)
    await asyncio.to_thread(process.entered.wait, 5)  # the worker is busy with [0]
    queued = [batcher.submit(i) for i in range(1, 6)]
    gate.set()
    assert await first == 0 and await asyncio.gather(*queued) == [2, 4, 6, 8, 10]
    await batcher.close()
    assert process.batches == [[0], [1, 2, 3, 4, 5]]


async def test_the_next_batch_never_exceeds_max_batch_size() -> None:
    gate = threading.Event()
    process = RecordingProcess(gate)
    observer = CountingObserver()
    batcher = make(process, max_batch_size=2, observer=observer, clock=FakeClock())
    batcher.start()
    first = batcher.submit(0)
    await asyncio.to_thread(process.entered.wait, 5)
    queued = [batcher.submit(i) for i in range(1, 6)]
    gate.set()
    assert await first == 0 and await asyncio.gather(*queued) == [2, 4, 6, 8, 10]
    await batcher.close()
    assert process.batches == [[0], [1, 2], [3, 4], [5]]
    assert observer.sizes == [1, 2, 2, 1]


async def test_opt_in_linger_holds_an_idle_worker_until_the_window_passes_by_the_clock() -> None:
    clock = FakeClock()
    process = RecordingProcess()
    batcher = make(process, max_wait_ms=5.0, clock=clock)
    batcher.start()
    lone = batcher.submit(1)
    await asyncio.sleep(0.02)  # four windows of real time: only the injected clock can end the linger
    assert not lone.done() and not process.entered.is_set()
    clock.now_s += 0.005
    assert await asyncio.wait_for(lone, 10) == 2
    await batcher.close()
    assert process.batches == [[1]]


async def test_opt_in_linger_ends_as_soon_as_a_full_batch_is_queued() -> None:
    process = RecordingProcess()
    batcher = make(process, max_batch_size=3, max_wait_ms=1000.0, clock=FakeClock())
    batcher.start()
    futures = [batcher.submit(i) for i in range(3)]  # the clock never moves: only the full batch ends it
    assert await asyncio.wait_for(asyncio.gather(*futures), 10) == [0, 2, 4]
    await batcher.close()
    assert process.batches == [[0, 1, 2]]


async def test_admission_beyond_max_pending_is_refused_at_once() -> None:
    gate = threading.Event()
    observer = CountingObserver()
    batcher = make(RecordingProcess(gate), max_pending=4, max_batch_size=2, observer=observer)
    batcher.start()
    admitted = [batcher.submit(i) for i in range(4)]
    with pytest.raises(ResourceExhausted, match=r"batching\.max_pending=4"):
        batcher.submit(99)
    assert observer.rejected == 1
    gate.set()
    assert await asyncio.gather(*admitted) == [0, 2, 4, 6]
    assert await batcher.submit(5) == 10  # capacity is released once answered
    await batcher.close()


async def test_cancelled_callers_are_skipped_and_release_their_slot() -> None:
    gate = threading.Event()
    process = RecordingProcess(gate)
    batcher = make(process, max_batch_size=1, max_pending=3)
    batcher.start()
    first = batcher.submit(1)
    await asyncio.to_thread(process.entered.wait, 5)  # item 1 is running; the rest queue behind it
    cancelled = batcher.submit(2)
    kept = batcher.submit(3)
    cancelled.cancel()
    await asyncio.sleep(0)
    assert batcher.pending == 2
    gate.set()
    assert await first == 2 and await kept == 6
    await batcher.close()
    assert [2] not in process.batches


async def test_deadline_expired_while_queued_is_not_computed() -> None:
    gate = threading.Event()
    process = RecordingProcess(gate)
    observer = CountingObserver()
    clock = FakeClock()
    batcher = make(process, max_batch_size=1, observer=observer, clock=clock)
    batcher.start()
    first = batcher.submit(1)
    await asyncio.to_thread(process.entered.wait, 5)
    doomed = batcher.submit(2, deadline_monotonic_s=clock.now_s + 0.02)
    kept = batcher.submit(3, deadline_monotonic_s=clock.now_s + 0.05)
    clock.now_s += 0.03  # doomed's deadline passes while it waits behind the running batch; kept's does not
    gate.set()
    assert await first == 2
    with pytest.raises(DeadlineExceeded, match="while it was queued"):
        await doomed
    assert await kept == 6
    await batcher.close()
    assert process.batches == [[1], [3]]
    assert observer.expired == 1


async def test_deadline_already_expired_is_refused_at_submit() -> None:
    process = RecordingProcess()
    clock = FakeClock()
    batcher = make(process, clock=clock)
    batcher.start()
    with pytest.raises(DeadlineExceeded, match="before it was queued"):
        batcher.submit(1, deadline_monotonic_s=clock.now_s)
    await batcher.close()
    assert process.batches == []


async def test_failing_process_fails_every_caller_of_the_batch_and_keeps_serving() -> None:
    calls = []

    def process(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise ValueError("boom")
        return items

    batcher = make(process)
    batcher.start()
    futures = [batcher.submit(i) for i in range(3)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    assert await batcher.submit(7) == 7
    await batcher.close()


async def test_wrong_result_count_fails_the_batch_instead_of_misassigning() -> None:
    batcher = make(lambda items: items[:-1])
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    await batcher.close()
    assert all(isinstance(r, RuntimeError) and "2 results for 3 items" in str(r) for r in results)


async def test_exception_result_fails_only_that_caller() -> None:
    batcher = make(lambda items: [ValueError(f"bad {i}") if i == 1 else i for i in items])
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    await batcher.close()
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], ValueError)


async def test_close_drains_queued_work_then_refuses_new_work() -> None:
    process = RecordingProcess()
    batcher = make(process, max_wait_ms=200.0, clock=FakeClock())  # only close() can end the linger
    batcher.start()
    futures = [batcher.submit(i) for i in range(3)]
    await batcher.close(timeout_s=5)
    assert [f.result() for f in futures] == [0, 2, 4]
    with pytest.raises(Unavailable):
        batcher.submit(1)


async def test_close_timeout_fails_the_rest_instead_of_hanging() -> None:
    gate = threading.Event()
    process = RecordingProcess(gate)
    batcher = make(process, max_batch_size=1)
    batcher.start()
    running = batcher.submit(1)
    await asyncio.to_thread(process.entered.wait, 5)
    queued = batcher.submit(2)
    await batcher.close(timeout_s=0)  # the running batch cannot finish in no time: close gives up on it
    with pytest.raises(Unavailable, match="shut down before this request ran"):
        await queued
    with pytest.raises(Unavailable, match="shut down while this request ran"):
        await running
    gate.set()  # let the abandoned worker thread finish
