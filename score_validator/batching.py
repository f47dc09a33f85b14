"""Micro-batching: concurrent score requests coalesced into one model call.

Each HTTP thread submits its (already validated and tokenised) pair and waits on a future. Worker
threads (one per model call that may run at once) take the queue in batches: a batch leaves when
it is full (`max_batch`) or when its oldest pair has waited `window_s`. Pairs that arrive while
every worker is busy queue up and leave together as soon as one is free, so under load batches form
without any waiting; an idle scorer adds at most the window to a lone request's latency.

One pair must never fail its batch mates: when the batched call raises, the batch is scored again
pair by pair, and only the pairs that fail alone get the error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


# ---------------------------------------------------------------------------------------------
# Pure decisions.


def flush_due(pending: int, oldest_wait_s: float, *, max_batch: int, window_s: float) -> bool:
    """Should the queued pairs leave now? Yes when a full batch waits, or the oldest waited the window."""
    if pending <= 0:
        return False
    return pending >= max_batch or oldest_wait_s >= window_s


def plan_chunks(lengths: Sequence[int], *, max_tokens: int) -> list[list[int]]:
    """Indices of `lengths` grouped into forward passes, shortest first.

    Sorting by length means each pass pads to about its own length, not to the batch's longest;
    a pass is closed when its padded size (count x longest) would exceed `max_tokens` (it bounds the
    memory of one pass), or when the next text is more than twice as long as the pass's shortest
    (padding would then cost more than the extra call saves). A text longer than `max_tokens` still
    gets a pass of its own.
    """
    chunks: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if current:
            shortest, longest = lengths[current[0]], lengths[index]
            if (len(current) + 1) * longest > max_tokens or longest > 2 * max(shortest, 1):
                chunks.append(current)
                current = []
        current.append(index)
    if current:
        chunks.append(current)
    return chunks


# ---------------------------------------------------------------------------------------------
# The coalescer.


@dataclass
class _Queued(Generic[Item, Result]):
    item: Item
    arrived: float
    future: Future[Result] = field(default_factory=Future)


class Coalescer(Generic[Item, Result]):
    """Queues items from many threads and scores them in batches on `workers` worker threads.

    `score_batch` takes a list and returns one result per item, in order. `on_batch` sees the size
    of every model call (the yahoo_score_batch_size histogram).
    """

    def __init__(
        self,
        score_batch: Callable[[list[Item]], list[Result]],
        *,
        max_batch: int,
        window_s: float,
        on_batch: Callable[[int], object] = lambda _size: None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "score-coalescer",
        workers: int = 1,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._score_batch, self._on_batch, self._clock = score_batch, on_batch, clock
        self.max_batch, self.window_s = max_batch, max(0.0, window_s)
        self._queue: deque[_Queued[Item, Result]] = deque()
        self._wakeup = threading.Condition()
        self._closed = False
        self._workers = [threading.Thread(target=self._run, name=f"{name}-{n}", daemon=True) for n in range(workers)]
        for worker in self._workers:
            worker.start()

    def submit(self, item: Item) -> Future[Result]:
        queued: _Queued[Item, Result] = _Queued(item, self._clock())
        with self._wakeup:
            if self._closed:
                raise RuntimeError("the scorer is shutting down")
            self._queue.append(queued)
            self._wakeup.notify()
        return queued.future

    def score(self, items: list[Item]) -> list[Result]:
        """Submits every item and waits for all results (the first error is raised)."""
        futures = [self.submit(item) for item in items]
        return [f.result() for f in futures]

    def close(self, timeout_s: float = 10.0) -> None:
        """Scores what is queued, then stops the worker."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify_all()
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    # -- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._complete(batch)

    def _next_batch(self) -> list[_Queued[Item, Result]] | None:
        with self._wakeup:
            while True:
                if self._queue:
                    waited = self._clock() - self._queue[0].arrived
                    if self._closed or flush_due(
                        len(self._queue), waited, max_batch=self.max_batch, window_s=self.window_s
                    ):
                        size = min(len(self._queue), self.max_batch)
                        batch = [self._queue.popleft() for _ in range(size)]
                        if self._queue:  # more than one batch waits: an idle worker can take the next
                            self._wakeup.notify()
                        return batch
                    self._wakeup.wait(timeout=self.window_s - waited)
                elif self._closed:
                    return None
                else:
                    self._wakeup.wait()

    def _complete(self, batch: list[_Queued[Item, Result]]) -> None:
        live = [q for q in batch if q.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self._call([q.item for q in live])
        except Exception as error:
            if len(live) == 1:
                log.exception("scoring a pair failed")
                live[0].future.set_exception(error)
                return
            log.warning("a batch of %d failed; scoring its pairs one by one", len(live))
            for queued in live:
                self._complete_alone(queued)
            return
        for queued, result in zip(live, results, strict=True):
            queued.future.set_result(result)

    def _complete_alone(self, queued: _Queued[Item, Result]) -> None:
        try:
            [result] = self._call([queued.item])
        except Exception as error:
            log.exception("scoring a pair failed")
            queued.future.set_exception(error)
            return
        queued.future.set_result(result)

    def _call(self, items: list[Item]) -> list[Result]:
        self._on_batch(len(items))
        results = self._score_batch(items)
        if len(results) != len(items):
            raise RuntimeError(f"the model returned {len(results)} results for {len(items)} pairs")
        return results
