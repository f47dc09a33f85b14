"""Access counting: every 2xx answer of POST /query (from the cache, from the database, or taken as
pending, the first POST that creates the question included) is one access of that question.

A cache hit never touched PostgreSQL before this; one UPDATE per hit would put a database round trip
(and a pool connection) on the path that exists to avoid one. So accesses are counted in memory (a
dict update under a lock) and written in batches: one UPDATE per flush, every `flush_every_s`
(1 s by default) and before GET /status and GET /metrics read them, so this process's readers
see every access it answered. The price: a crash loses at most the last interval's counts, and a
reader of PostgreSQL itself sees them up to `flush_every_s` late.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

log = logging.getLogger(__name__)


@dataclass
class PendingAccess:
    count: int
    last_at: datetime


Batch = dict[str, PendingAccess]


def add_access(batch: Batch, question_id: str, at: datetime, count: int = 1) -> None:
    """Count `count` accesses of a question in a batch, keeping the latest access time."""
    current = batch.get(question_id)
    if current is None:
        batch[question_id] = PendingAccess(count, at)
    else:
        current.count += count
        current.last_at = max(current.last_at, at)


def merge_back(pending: Batch, failed: Batch, max_questions: int) -> int:
    """Return an unwritten batch to the pending one (the next flush retries it), holding at most
    `max_questions` distinct questions so an outage cannot grow memory without bound. Returns the
    number of accesses dropped."""
    dropped = 0
    for question_id, access in failed.items():
        if question_id in pending or len(pending) < max_questions:
            add_access(pending, question_id, access.last_at, access.count)
        else:
            dropped += access.count
    return dropped


class AccessRecorder:
    """Counts accesses in memory and writes them with `write` (Repository.record_accesses)."""

    def __init__(
        self,
        write: Callable[[Batch], None],
        flush_every_s: float = 1.0,
        max_pending_questions: int = 100_000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._write = write
        self._flush_every_s = flush_every_s
        self._max_pending = max_pending_questions
        self._clock = clock
        self._lock = threading.Lock()  # guards the pending batch and the counters
        self._flush_lock = threading.Lock()  # one flush at a time: a reader's flush waits for one under way
        self._pending: Batch = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.recorded = 0
        self.written = 0
        self.dropped = 0
        self.flush_failures = 0
        self._failing = False  # the last write failed: readers stop waiting on new attempts

    def record(self, question_id: str) -> None:
        """One access, now: the only cost on the request path."""
        at = self._clock()
        with self._lock:
            add_access(self._pending, question_id, at)
            self.recorded += 1

    def flush(self) -> int:
        """Write what is pending; never raises (a failed write is retried by the next flush).
        Returns the number of accesses written."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return 0
            try:
                self._write(batch)
            except Exception as exc:  # noqa: BLE001 - counting must never break answering questions
                with self._lock:
                    self.flush_failures += 1
                    self._failing = True
                    dropped = merge_back(self._pending, batch, self._max_pending)
                    self.dropped += dropped
                log.warning(
                    "could not write access counts; retrying at the next flush",
                    extra={"questions": len(batch), "dropped": dropped, "error": str(exc)},
                )
                return 0
            written = sum(access.count for access in batch.values())
            with self._lock:
                self.written += written
                self._failing = False
            return written

    def flush_before_read(self) -> int:
        """What GET /status and GET /metrics call: a flush, unless the last one failed (PostgreSQL is
        likely away: the reader's own query will say so, and must not wait twice for its timeout;
        the background thread keeps retrying)."""
        with self._lock:
            failing = self._failing
        return 0 if failing else self.flush()

    def stats(self) -> dict[str, int]:
        with self._lock:
            pending = sum(access.count for access in self._pending.values())
            return {
                "accesses_recorded": self.recorded,
                "accesses_unwritten": pending,
                "accesses_dropped": self.dropped,
                "access_flush_failures": self.flush_failures,
            }

    def start(self) -> AccessRecorder:
        """Flush every `flush_every_s` in a daemon thread until close()."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="access-flush", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._flush_every_s):
            self.flush()

    def close(self) -> None:
        """Stop the thread and write what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
