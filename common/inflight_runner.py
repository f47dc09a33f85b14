"""A consumer runner with many messages in flight (llm_consumer: many LLM calls at once), still
at-least-once.

Each polled message takes a slot; its handler runs on a thread pool; when it returns, its outputs are
produced and acknowledged as ConsumerRunner does for one message, and the message counts as done. Per
partition only the contiguous done prefix is committed (common.inflight.OffsetTracker), so a crash
redelivers everything after the first message not done. A question has at most one message in flight
(the slots of one key run one after another, in offset order), so its own events stay ordered;
different questions interleave.

Differences from ConsumerRunner, which keeps its one-message-at-a-time path for every other consumer:
- at the limit the loop stops polling and waits for a completion (as the sequential runner does
  during its one handler call);
- a message to retry later (RetryLater, an outage, a failing handler, unacknowledged outputs) is held
  in its slot until its due time instead of pausing and rewinding its partition: the other messages
  of the partition go on, its commit waits;
- on revoke the in-flight messages of the revoked partitions get `revoke_wait_s` to finish; those
  that do are produced and their prefix committed, the others are dropped (redelivered to the next
  owner; their results, if they come later, are thrown away). Dropped calls were not marked answered
  in the call ledger (that happens only after delivery), so the next owner calls the LLM again:
  at most one more call per dropped message, never a lost question;
- on SIGTERM the calls in flight get `drain_timeout_s` to finish, are produced and committed.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from common import metrics, topics
from common.inflight import OffsetTracker
from common.kafka import ConsumerRunner, DeadLetterReason, Output, Where, _Outcome, checked_outputs, position
from common.messages import PipelineMessage

log = logging.getLogger(__name__)

# While calls are in flight the poll waits this long at most, so a finished call is produced soon.
BUSY_POLL_S = 0.02


@dataclass
class _Slot:
    """One accepted message until it is done: running, held until `due`, or waiting for its key."""

    msg: Message
    key: Hashable
    message: PipelineMessage | None = None
    future: Future[list[Output]] | None = None
    due: float | None = None


class InFlightRunner(ConsumerRunner):
    """ConsumerRunner with up to `max_in_flight()` messages in flight (read at every turn)."""

    def __init__(
        self,
        *,
        max_in_flight: Callable[[], int],
        max_workers: int,
        drain_timeout_s: float = 30.0,
        revoke_wait_s: float = 10.0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if topics.DEAD_LETTER in self.source_topics:
            raise ValueError("the dead-letter topic is consumed one message at a time (ConsumerRunner)")
        self.max_in_flight = max_in_flight
        self.drain_timeout_s, self.revoke_wait_s = drain_timeout_s, revoke_wait_s
        self.pool = ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix=f"{self.stage}-call")
        self.offsets = OffsetTracker()
        self.slots: dict[Where, _Slot] = {}  # accepted and not done, in arrival order
        self._by_key: dict[Hashable, deque[Where]] = {}  # per question: its slots in offset order
        self._requested: dict[tuple[str, int], int] = {}  # the last commit asked for, per partition

    # -- the loop ---------------------------------------------------------------------------------

    def poll_once(self, timeout_s: float = 0.5) -> None:
        self._settle()
        metrics.CONSUMER_IN_FLIGHT.labels(self.stage).set(self.running())
        if len(self.slots) >= max(1, self.max_in_flight()):
            # Full: take nothing more until a call finishes (the sequential runner does not poll
            # during its one call either).
            self.heartbeat.beat()
            metrics.mark_poll(self.stage)
            self._retry_commits()
            self._wait_for_progress(timeout_s)
            self._settle()
            return
        super().poll_once(min(timeout_s, BUSY_POLL_S) if self.slots else timeout_s)

    def running(self) -> int:
        return sum(1 for slot in self.slots.values() if slot.future is not None)

    def handle(self, msg: Message) -> None:
        """Accept a polled message into a slot; it starts when its question has nothing else in flight."""
        self._accept(msg)
        self._start_ready()

    def _accept(self, msg: Message) -> _Slot | None:
        where = position(msg)
        partition = (where[0], where[1])
        if where in self.slots or self.offsets.is_done(partition, where[2]):
            return self.slots.get(where)  # delivered again while still ours (nothing rewinds here)
        try:
            self.offsets.start(partition, where[2])
        except ValueError:  # the client went back on this partition (an offset reset): start over
            log.warning("partition rewound; dropping its messages in flight", extra=self._where_extra(msg))
            self._drop({partition})
            self.offsets.start(partition, where[2])
        slot = _Slot(msg, key=msg.key() or where)
        self.slots[where] = slot
        self._by_key.setdefault(slot.key, deque()).append(where)
        return slot

    # -- starting and finishing slots -------------------------------------------------------------

    def _start_ready(self) -> None:
        now = self.clock()
        for queue in list(self._by_key.values()):
            where = queue[0]
            slot = self.slots[where]
            if slot.future is None and (slot.due is None or slot.due <= now):
                self._start(where, slot)

    def _start(self, where: Where, slot: _Slot) -> None:
        slot.due = None
        try:
            outcome = self.unacknowledged.get(where)
            if outcome is not None:  # produced before but not acknowledged: send again, no handler
                self._deliver(slot.msg, outcome)
                return
            try:
                slot.message = PipelineMessage.from_bytes(slot.msg.value())
            except Exception as exc:  # noqa: BLE001 - whatever the bytes do, they become a dead letter
                self._deliver(slot.msg, self._dead_letter(slot.msg, DeadLetterReason.DECODE, f"unparseable: {exc}"))
                return
            slot.future = self.pool.submit(self._call_handler, slot.message, where[0])
        except Exception as exc:  # noqa: BLE001 - one message must never end the loop
            self._hold_after_surprise(slot.msg, exc)

    def _call_handler(self, message: PipelineMessage, topic: str) -> list[Output]:
        """On a pool thread: only the handler; everything that touches the clients stays on the loop."""
        return checked_outputs(self.handler(message, topic))

    def _settle(self, *, start: bool = True) -> None:
        """Produce what finished calls returned, commit what became committable, start what is ready."""
        for where, slot in list(self.slots.items()):
            future = slot.future
            if future is None or not future.done() or self.slots.get(where) is not slot:
                continue
            slot.future = None
            try:
                outcome = self._outcome_of_call(slot, future)
                if outcome is not None:
                    self._deliver(slot.msg, outcome)
            except Exception as exc:  # noqa: BLE001 - one message must never end the loop
                self._hold_after_surprise(slot.msg, exc)
        if start:
            self._start_ready()  # may deliver at once (outputs sent again, a dead letter)
        self._request_commits()

    def _outcome_of_call(self, slot: _Slot, future: Future[list[Output]]) -> _Outcome | None:
        assert slot.message is not None  # set before the call was submitted
        try:
            return _Outcome(future.result(), slot.message)
        except Exception as exc:  # noqa: BLE001 - classified by _after_failure
            return self._after_handler_failure(slot.msg, slot.message, exc)

    def _commit(self, where: Where) -> None:
        """The message's outputs were acknowledged: it is done; its prefix is committed by _settle."""
        topic, partition, offset = where
        self._release(where)
        self.offsets.done((topic, partition), offset)

    def _request_commits(self) -> None:
        for partition in self.offsets.partitions():
            committable = self.offsets.committable(partition)
            if committable is not None and committable != self._requested.get(partition):
                self._requested[partition] = committable
                self.uncommitted[partition] = committable
                self._commit_retry_at = 0.0
        self._retry_commits()

    def _hold(self, msg: Message, until: float) -> None:
        """Retry `msg` at `until` from its slot; its partition goes on, its commit waits."""
        slot = self.slots.get(position(msg)) or self._accept(msg)  # accepted now, so it cannot be skipped
        if slot is not None:
            slot.future, slot.due = None, until

    def _release(self, where: Where) -> None:
        slot = self.slots.pop(where, None)
        if slot is None:
            return
        queue = self._by_key.get(slot.key)
        if queue is not None:
            if where in queue:
                queue.remove(where)
            if not queue:
                del self._by_key[slot.key]

    def _wait_for_progress(self, timeout_s: float) -> None:
        running = [slot.future for slot in self.slots.values() if slot.future is not None]
        if running:
            wait(running, timeout=timeout_s, return_when=FIRST_COMPLETED)
            return
        dues = [slot.due for slot in self.slots.values() if slot.due is not None]
        pause = min(dues) - self.clock() if dues else timeout_s
        self.stop.wait(max(0.0, min(timeout_s, pause)))

    # -- rebalances and shutdown ------------------------------------------------------------------

    def _drain(self, which: Callable[[Where], bool], timeout_s: float) -> None:
        """Give the running calls of `which` up to `timeout_s` to finish; produce and commit them."""
        deadline = time.monotonic() + timeout_s
        while True:
            running = [slot.future for where, slot in self.slots.items() if which(where) and slot.future is not None]
            remaining = deadline - time.monotonic()
            if not running or remaining <= 0:
                break
            wait(running, timeout=min(remaining, 1.0), return_when=FIRST_COMPLETED)
            self._settle(start=False)
            self.heartbeat.beat()
        self._settle(start=False)
        left = sum(1 for where, slot in self.slots.items() if which(where) and slot.future is not None)
        if left:
            log.warning("calls still in flight after the wait; dropped", extra={"stage": self.stage, "dropped": left})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._is_replaced(consumer):
            return  # the replaced client's close(): its slots were dropped when it was replaced
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._drain(lambda where: (where[0], where[1]) in gone, self.revoke_wait_s)
        super()._on_revoke(consumer, partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        super()._forget(partitions)
        self._drop({(tp.topic, tp.partition) for tp in partitions})

    def _rebuild_consumer(self) -> None:
        super()._rebuild_consumer()
        self._drop({(where[0], where[1]) for where in self.slots} | set(self.offsets.partitions()))

    def _drop(self, partitions: set[tuple[str, int]]) -> None:
        """Forget the partitions' slots: their calls' results are thrown away, the messages redelivered."""
        for where in [w for w in self.slots if (w[0], w[1]) in partitions]:
            future = self.slots[where].future
            if future is not None:
                future.cancel()  # only a call not started yet can be cancelled; a running one is ignored
            self._release(where)
        self.offsets.drop(list(partitions))
        for partition in partitions:
            self._requested.pop(partition, None)

    def _shutdown(self) -> None:
        try:
            self._drain(lambda _where: True, self.drain_timeout_s)
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
            super()._shutdown()
