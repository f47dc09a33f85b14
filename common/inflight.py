"""Pure pieces for a consumer with many messages in flight: which offset may be committed, and how
many calls may be in flight.

`OffsetTracker`: messages of a partition start in offset order but finish in any order; only the
contiguous finished prefix may be committed (at-least-once: a crash redelivers everything after it).

`AimdLimiter`: additive increase, multiplicative decrease, as TCP's congestion control. Chosen over a
gradient limiter because it is simple to reason about and test, and because our LLM servers say
"too much" explicitly (503 from a busy Ollama or vLLM, 429 from a hosted API, timeouts): a signal
AIMD reacts to directly, where a gradient limiter needs a stable latency baseline that LLM calls
(whose latency follows the answer's length) rarely give. Latency still counts, per window of
calls (its median), so a server that queues instead of refusing (a one-slot Ollama) shrinks it too.
"""

from __future__ import annotations

import statistics
import threading
from dataclasses import dataclass

Partition = tuple[str, int]  # topic, partition


class OffsetTracker:
    """Per partition: the offsets started, which of them are done, and what may be committed."""

    def __init__(self) -> None:
        # offset -> done, in start order (ascending): the front is compacted into `_floor`.
        self._started: dict[Partition, dict[int, bool]] = {}
        self._floor: dict[Partition, int] = {}  # the next offset after the contiguous done prefix

    def start(self, partition: Partition, offset: int) -> bool:
        """Record that `offset` is being processed; False when it was already started or done."""
        if offset < self._floor.get(partition, -1):
            return False
        started = self._started.setdefault(partition, {})
        if offset in started:
            return False
        if started and offset < next(reversed(started)):
            raise ValueError(f"offset {offset} started after a later one on {partition}")
        started[offset] = False
        return True

    def done(self, partition: Partition, offset: int) -> None:
        """`offset` is finished (its outputs acknowledged); a partition dropped since is ignored."""
        started = self._started.get(partition)
        if started is None or offset not in started:
            return
        started[offset] = True
        for first, finished in list(started.items()):  # compact the done prefix into the floor
            if not finished:
                break
            del started[first]
            self._floor[partition] = first + 1

    def is_done(self, partition: Partition, offset: int) -> bool:
        return offset < self._floor.get(partition, -1) or self._started.get(partition, {}).get(offset, False)

    def committable(self, partition: Partition) -> int | None:
        """The offset to commit (the next one after the contiguous done prefix), None before any."""
        return self._floor.get(partition)

    def pending(self, partition: Partition) -> list[int]:
        """Offsets started and not done yet, lowest first."""
        return [offset for offset, finished in self._started.get(partition, {}).items() if not finished]

    def partitions(self) -> list[Partition]:
        return list(self._started.keys() | self._floor.keys())

    def drop(self, partitions: list[Partition]) -> None:
        """Forget revoked partitions: their messages are redelivered to whoever owns them next."""
        for partition in partitions:
            self._started.pop(partition, None)
            self._floor.pop(partition, None)


OVERLOAD_DECREASE = 0.5  # the server said "too much" (503, 429, timeout)
LATENCY_DECREASE = 0.75  # calls took longer: maybe ours queued, maybe another client's


@dataclass(frozen=True)
class Ticket:
    """Handed out when a call starts: which version of the limit it started under."""

    epoch: int


class AimdLimiter:
    """How many calls may be in flight, between 1 and `max_limit`; safe to use from many threads.

    - Slow start: from 1, double after each clean round of `limit` calls until the first sign of
      congestion (as TCP), so a parallel server is found in a few round trips, not one step per window.
    - Then grow by 1 after each clean window: `window` successes whose median latency stays within
      `tolerance` of the best window median seen (or within `min_rise_s` of it: a server answering
      in milliseconds jitters by more than half its latency without queueing anything).
    - Halve on an overload (503, 429, timeout, unreachable); take a quarter off on a window whose
      median latency rose past the tolerance. Calls that started before the last decrease do not
      decrease it again: a burst of 503s from one overload halves once, as TCP reacts once per round
      trip. Latency is the gentler signal because it also rises with other clients' load: two
      consumers sharing a server both see the queue either of them filled, and halving on that
      emptied the server (measured: 64 calls on 32 slots fell to 3 in flight, then crept back).
      A queueing server loses no throughput to a few calls too many, only to too few.
    - Probing above a limit that overloaded before is rare: the window to grow past it doubles each
      time it overloads again (up to `max_probe_backoff`), so a one-slot server answering 503 beyond
      one call sees an occasional probe, not one every other call.
    - A cut for latency must pay: if the next window is not a tenth faster, fewer calls of ours were
      not the cause (the server got slower for everyone: another model, other clients, a busy
      machine), and its median becomes the new baseline instead of cutting on to 1 against an old
      best (measured: 16 -> 1 in 12 s on a CPU-starved machine, then +1 every 2 s). A window at
      limit 1 resets the baseline too: one call at a time is the server's own latency.
    """

    def __init__(
        self,
        max_limit: int,
        *,
        initial: int = 1,
        min_window: int = 4,
        tolerance: float = 0.5,
        min_rise_s: float = 0.03,
        max_probe_backoff: int = 64,
    ) -> None:
        if max_limit < 1:
            raise ValueError("max_limit must be at least 1")
        self.max_limit = max_limit
        self.min_window, self.tolerance, self.min_rise_s = min_window, tolerance, min_rise_s
        self.max_probe_backoff = max_probe_backoff
        self._lock = threading.Lock()
        self._limit = max(1, min(initial, max_limit))
        self._epoch = 0  # bumped at every change of the limit
        self._decreased_at = 0  # the epoch of the last decrease
        self._slow_start = True
        self._latencies: list[float] = []  # of successes started under the current epoch
        self._baseline: float | None = None  # the best window median seen (reset at limit 1)
        self._ceiling: int | None = None  # a limit that overloaded; growing to it needs a longer window
        self._slow_median: float | None = None  # the window median that made the last cut for latency
        self._probe_backoff = 1

    @property
    def limit(self) -> int:
        return self._limit

    def start(self) -> Ticket:
        with self._lock:
            return Ticket(self._epoch)

    def succeeded(self, ticket: Ticket, latency_s: float) -> None:
        with self._lock:
            if ticket.epoch != self._epoch:  # measured under another limit
                return
            self._latencies.append(latency_s)
            if len(self._latencies) < self._window():
                return
            median = statistics.median(self._latencies)
            self._latencies = []
            if self._baseline is None or median <= self._baseline or self._limit == 1:
                self._baseline = median
            if self._latency_rose(median) and self._cut_helped(median):
                self._congested(LATENCY_DECREASE)  # the server queues our calls instead of running them side by side
                self._slow_median = median
            elif self._latency_rose(median):
                # Fewer calls of ours did not make them faster: the server is slower for everyone
                # (another client, a longer prompt, a busy machine). That is its latency now.
                self._baseline, self._slow_median = median, None
            else:
                self._increase()

    def overloaded(self, ticket: Ticket) -> None:
        """The server refused or did not answer in time (503, 429, timeout, unreachable)."""
        with self._lock:
            if ticket.epoch < self._decreased_at:  # this overload was already answered
                return
            self._congested(OVERLOAD_DECREASE)
            self._slow_median = None

    def _cut_helped(self, median: float) -> bool:
        """After a cut for latency, did the next window get faster by a tenth? (True before any cut.)"""
        return self._slow_median is None or median < self._slow_median * 0.9

    def _latency_rose(self, median: float) -> bool:
        assert self._baseline is not None
        rise = median - self._baseline
        return rise > self._baseline * self.tolerance and rise > self.min_rise_s

    def _window(self) -> int:
        # Slow start: one round of calls per step (as TCP's window doubles once per round trip).
        window = self._limit if self._slow_start else max(self.min_window, self._limit)
        if self._ceiling is not None and self._limit < self._ceiling <= self._limit + 1:
            window *= self._probe_backoff  # the next step reaches a limit that overloaded before
        return window

    def _increase(self) -> None:
        self._slow_median = None
        grown = self._limit * 2 if self._slow_start else self._limit + 1
        if self._ceiling is not None and self._limit >= self._ceiling:
            self._ceiling, self._probe_backoff = None, 1  # it held above the old ceiling: forget it
        self._set(min(self.max_limit, grown))

    def _congested(self, factor: float) -> None:
        if self._ceiling is not None and self._limit >= self._ceiling:
            self._probe_backoff = min(self.max_probe_backoff, self._probe_backoff * 2)
        self._ceiling = self._limit
        self._decrease(factor)

    def _decrease(self, factor: float) -> None:
        self._slow_start = False
        self._set(max(1, int(self._limit * factor)))
        self._decreased_at = self._epoch

    def _set(self, limit: int) -> None:
        self._limit = limit
        self._epoch += 1
        self._latencies = []
