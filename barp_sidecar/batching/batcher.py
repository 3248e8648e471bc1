"""Dynamic micro-batcher with bounded admission (DESIGN §5), generic over the work item.

Owns the queue, admission (``max_pending``), batch formation (``max_batch_size`` / ``max_wait_ms``), the one
worker thread that runs ``process`` on a batch, and resolving every caller's future exactly once. Knows
nothing about gRPC, encoders or policies: ``process(items) -> results`` is injected.

Invariants:
- ``submit`` either raises at once (ResourceExhausted / DeadlineExceeded / Unavailable) or returns a future
  that is resolved exactly once (result or exception), including on shutdown.
- A caller that went away (future cancelled) is skipped, not computed; an item whose deadline passed while
  queued is failed with DeadlineExceeded, not computed.
- Batches run one at a time on one dedicated thread, so ``process`` may own non-thread-safe state.

Batch formation (continuous batching, as in text-embeddings-inference or Triton's dynamic batcher with no
queue delay): an idle worker takes what is queued at once, up to ``max_batch_size``; requests that arrive
while a batch runs queue and form the next batch when it ends. Under load batches therefore grow on their
own, and no request waits for a worker that is idle. ``max_wait_ms`` (0 by default) is an opt-in linger: an
idle worker holds the first queued request up to that long for a full batch. It trades latency for bigger
batches when a pass has a large fixed cost, and makes closed-loop callers move in lock-step (every request
pays the window while the worker sits idle), which is why it is off by default (docs/benchmarks.md).
The linger's window is measured with the injected ``clock``, re-checked on every arrival.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar

import structlog

from barp_sidecar.errors import AdmissionFull, DeadlineExceeded, ShuttingDown
from barp_sidecar.tasks import wait_event

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
ReturnT = TypeVar("ReturnT")

log = structlog.get_logger(__name__)


class BatchObserver(Protocol):
    """Receives batching facts (the metrics layer implements it)."""

    def batch_done(self, size: int, queue_waits_s: Sequence[float], run_s: float) -> None: ...

    def admission_rejected(self) -> None: ...

    def expired_in_queue(self) -> None: ...


class _NullObserver:
    def batch_done(self, size: int, queue_waits_s: Sequence[float], run_s: float) -> None:
        pass

    def admission_rejected(self) -> None:
        pass

    def expired_in_queue(self) -> None:
        pass


# Told, before the caller's future resolves: its queue wait (s), its batch's size and run time (s).
TimingCallback = Callable[[float, int, float], None]


class _Pending(Generic[ItemT, ResultT]):
    __slots__ = ("deadline_s", "enqueued_s", "future", "item", "on_timing")

    def __init__(
        self,
        item: ItemT,
        future: asyncio.Future[ResultT],
        enqueued_s: float,
        deadline_s: float | None,
        on_timing: TimingCallback | None = None,
    ) -> None:
        self.item = item
        self.future = future
        self.enqueued_s = enqueued_s
        self.deadline_s = deadline_s
        self.on_timing = on_timing


class MicroBatcher(Generic[ItemT, ResultT]):
    """Collects concurrent submissions into batches for ``process``, run on one worker thread.

    ``process`` receives a non-empty list and must return a list of the same length; an element that is
    an exception instance fails only that caller. If ``process`` raises, every caller in the batch gets
    that exception.
    """

    def __init__(
        self,
        process: Callable[[list[ItemT]], Sequence[ResultT | BaseException]],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_pending: int,
        observer: BatchObserver | None = None,
        thread_name: str = "barp-inference",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1 or max_pending < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_pending must be >= 1, max_wait_ms >= 0")
        self._process = process
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000.0
        self._max_pending = max_pending
        self._observer: BatchObserver = observer or _NullObserver()
        self._thread_name = thread_name
        self._clock = clock
        self._queue: deque[_Pending[ItemT, ResultT]] = deque()
        self._pending = 0
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        # Set on every arrival and on close: wakes the batching task when idle or lingering.
        self._wakeup: asyncio.Event | None = None

    @property
    def pending(self) -> int:
        """Admitted requests not yet answered (queued or in the running batch)."""
        return self._pending

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    def start(self) -> None:
        """Start the batching task and the worker thread. Must be called from the serving event loop."""
        if self._task is not None:
            raise RuntimeError("MicroBatcher already started")
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
        self._task = self._loop.create_task(self._run(), name="micro-batcher")

    async def call_in_worker(self, function: Callable[[], ReturnT]) -> ReturnT:
        """Run ``function`` on the worker thread (e.g. a warm-up pass), outside of any batch."""
        if self._executor is None or self._loop is None:
            raise RuntimeError("MicroBatcher not started")
        return await self._loop.run_in_executor(self._executor, function)

    def submit(
        self,
        item: ItemT,
        deadline_monotonic_s: float | None = None,
        on_timing: TimingCallback | None = None,
    ) -> asyncio.Future[ResultT]:
        """Admit ``item`` or raise at once. The returned future resolves exactly once.

        ``on_timing`` (tracing) is called with this item's queue wait, batch size and batch run time just
        before a computed result is delivered."""
        if self._loop is None or self._wakeup is None:
            raise RuntimeError("MicroBatcher not started")
        if self._closing:
            raise ShuttingDown("the sidecar is shutting down")
        if self._pending >= self._max_pending:
            self._observer.admission_rejected()
            raise AdmissionFull(
                f"{self._pending} requests pending (batching.max_pending={self._max_pending}); "
                "retry with backoff"
            )
        now = self._clock()
        if deadline_monotonic_s is not None and deadline_monotonic_s <= now:
            self._observer.expired_in_queue()
            raise DeadlineExceeded("the call's deadline passed before it was queued")
        future: asyncio.Future[ResultT] = self._loop.create_future()
        self._pending += 1
        future.add_done_callback(self._release)
        self._queue.append(_Pending(item, future, now, deadline_monotonic_s, on_timing))
        self._wakeup.set()
        return future

    def _release(self, _future: asyncio.Future[ResultT]) -> None:
        self._pending -= 1

    async def close(self, timeout_s: float | None = None) -> None:
        """Stop admitting, finish the queue (within ``timeout_s``), fail what is left, stop the thread."""
        self._closing = True
        drained = True
        if self._task is not None and self._wakeup is not None:
            self._wakeup.set()
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(self._task)
            except TimeoutError:
                log.warning("batcher_drain_timeout", timeout_s=timeout_s, left=len(self._queue))
                drained = False
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(ShuttingDown("the sidecar shut down before this request ran"))
        if self._executor is not None:
            # After a clean drain the thread is idle; after a timeout it may still be inside a batch, and
            # blocking the event loop on it would hang shutdown, so it is left to finish on its own.
            self._executor.shutdown(wait=drained, cancel_futures=True)
            self._executor = None

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._max_wait_s > 0:
                await self._linger()
            batch, waits_s = self._take()
            if batch:
                await self._execute(batch, waits_s)

    async def _linger(self) -> None:
        """Opt-in (``max_wait_ms`` > 0): hold the idle worker until a full batch is queued, the first queued
        request has waited ``max_wait_ms`` by the clock, or the batcher closes."""
        assert self._wakeup is not None
        while len(self._queue) < self._max_batch_size and not self._closing:
            remaining_s = self._queue[0].enqueued_s + self._max_wait_s - self._clock()
            if remaining_s <= 0:
                return
            self._wakeup.clear()
            await wait_event(self._wakeup, remaining_s)

    def _take(self) -> tuple[list[_Pending[ItemT, ResultT]], list[float]]:
        """Pop up to max_batch_size live requests; skip cancelled ones, fail expired ones."""
        now = self._clock()
        batch: list[_Pending[ItemT, ResultT]] = []
        waits_s: list[float] = []
        while self._queue and len(batch) < self._max_batch_size:
            pending = self._queue.popleft()
            if pending.future.done():  # the caller went away
                continue
            if pending.deadline_s is not None and pending.deadline_s <= now:
                self._observer.expired_in_queue()
                pending.future.set_exception(
                    DeadlineExceeded("the call's deadline passed while it was queued")
                )
                continue
            batch.append(pending)
            waits_s.append(now - pending.enqueued_s)
        return batch, waits_s

    async def _execute(self, batch: list[_Pending[ItemT, ResultT]], waits_s: list[float]) -> None:
        assert self._loop is not None and self._executor is not None
        started_s = self._clock()
        items = [pending.item for pending in batch]
        try:
            results = await self._loop.run_in_executor(self._executor, self._process, items)
            if len(results) != len(batch):
                raise RuntimeError(f"batch process returned {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:  # close() gave up waiting: nobody may hang on this batch
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(ShuttingDown("the sidecar shut down while this request ran"))
            raise
        except Exception as error:  # every caller must get an answer, whatever went wrong
            log.exception("batch_failed", size=len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        run_s = self._clock() - started_s
        for pending, result, wait_s in zip(batch, results, waits_s, strict=True):
            if pending.future.done():  # cancelled while the batch ran
                continue
            if pending.on_timing is not None:
                pending.on_timing(wait_s, len(batch), run_s)
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
        self._observer.batch_done(len(batch), waits_s, run_s)
