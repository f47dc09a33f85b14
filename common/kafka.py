"""Kafka client helpers: a producer with confirmed delivery, the one consumer runner, topic creation.

The runner is at-least-once: a handler takes a message and returns what to produce; the runner
produces it, waits until the broker acknowledged all of it, and only then commits the consumed
offset. Whatever arrives, the loop keeps going: bytes that are not a valid message go to the
dead-letter topic with the reason (never dropped), a handler that keeps failing on a message
dead-letters it, an outage (broker, database) is waited out with capped backoff, and a failed commit
or dead-letter produce is retried. No single message can stop the process.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from common import metrics, topics
from common.messages import DeadLetter, PipelineMessage
from common.settings import ServiceSettings

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 3
MAX_HANDLER_FAILURES = 5
HANDLER_FAILURE_BACKOFF_S = 2.0
MAX_TRANSIENT_BACKOFF_S = 30.0
COMMIT_RETRY_S = 2.0
# A consumer with no partitions for this long asks the broker whether it is still in its group.
MEMBERSHIP_CHECK_S = 30.0
# The probe runs in the poll loop: while the broker is away it holds the loop this long at most.
MEMBERSHIP_PROBE_TIMEOUT_S = 2.0
# Java's default partitioner for keyed records: murmur2(key) % partitions. The same here, so a
# question_id lands on the same partition whether Python or the Flink job's Kafka sink wrote it.
PARTITIONER = "murmur2_random"

# (topic, message) to produce; the key is the message's question_id.
Output = tuple[str, PipelineMessage | DeadLetter]
# handler(message, source_topic) -> what to produce; raise RetryLater to wait, TransientError for outages.
Handler = Callable[[PipelineMessage, str], Sequence[Output]]
# For consumers of the dead-letter topic: the envelope instead of a pipeline message.
DeadLetterHandler = Callable[[DeadLetter, str], Sequence[Output]]
# Called once what a handler returned was acknowledged by the broker (before the commit).
DeliveredHook = Callable[[PipelineMessage, Sequence[Output]], None]

Where = tuple[str, int, int]  # topic, partition, offset of a consumed message


class DeadLetterReason(StrEnum):
    """Why a consumer dead-lettered a message, as a bounded metric label (the full reason is in the letter)."""

    DECODE = "decode"  # the bytes are not a valid message
    HANDLER = "handler"  # the handler kept failing on it


class DeliveryError(RuntimeError):
    """The broker did not acknowledge a produced message in time."""


class TransientError(Exception):
    """Raised by a handler when a dependency (database, broker) is unavailable: the message is
    retried with backoff until it succeeds, and never dead-lettered for it."""


class RetryLater(Exception):
    """Raised by a handler: this message is not due yet; hand it back at `due` (epoch seconds)."""

    def __init__(self, due: float) -> None:
        super().__init__(f"not due until {due}")
        self.due = due


def message_key(message: PipelineMessage | DeadLetter) -> bytes | None:
    """Every message is keyed by its question, so all events of a question stay on one partition."""
    return message.question_id.encode("utf-8") if message.question_id else None


class _DeliveryReport:
    """One message's delivery report, awaited by the thread that produced it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: KafkaError | None = None

    def record(self, err: KafkaError | None, _msg: Message) -> None:
        self.error = err
        self.done.set()


class ConfirmedProducer:
    """A producer whose `flush()` raises unless every message since the last flush was acknowledged."""

    # send_and_wait's caller waits this much longer than message.timeout.ms for its report.
    ACK_GRACE_S = 5.0
    # How long the delivery-report thread blocks in one poll; a report wakes it at once.
    REPORT_POLL_S = 0.2

    def __init__(self, bootstrap_servers: str, client_id: str, message_timeout_s: float = 30.0) -> None:
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap_servers,
                "client.id": client_id,
                "acks": "all",
                "enable.idempotence": True,
                # A request's acknowledgement is its latency (POST /query waits for it): send at
                # once. Concurrent messages still share a request while earlier ones are in flight.
                "linger.ms": 1,
                "socket.nagle.disable": True,
                "partitioner": PARTITIONER,
                # After this the client gives up on a message for good and reports it failed.
                "message.timeout.ms": int(message_timeout_s * 1000),
            }
        )
        self.message_timeout_s = message_timeout_s
        self._failures: list[str] = []
        self._reporter: threading.Thread | None = None
        self._reporter_lock = threading.Lock()
        self._closing = threading.Event()

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err}")

    def send(self, topic: str, message: PipelineMessage | DeadLetter) -> None:
        self.send_raw(topic, message_key(message), message.to_bytes())

    def send_raw(self, topic: str, key: bytes | None, value: bytes, headers: list | None = None) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, headers=headers, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: let it drain, then try again
                self._producer.poll(0.5)
            except KafkaException as exc:
                raise DeliveryError(f"could not enqueue for {topic}: {exc}") from exc
        self._producer.poll(0)

    def send_and_wait(self, topic: str, message: PipelineMessage) -> None:
        """Produce one message and wait for its own delivery report (safe from many threads).

        One background thread serves every delivery report (`_serve_delivery_reports`); the caller
        sleeps on its own event and wakes the moment its report arrives. (Callers that each polled
        the shared client in slices waited for one another's slices: any thread's poll may serve
        any report, so a report served by another thread was noticed only when one's slice ended.)
        The wait outlasts message.timeout.ms, so the report is definitive: a message reported
        failed will not be delivered later behind the caller's back.
        """
        self._start_reporter()
        report = _DeliveryReport()
        try:
            self._producer.produce(topic, key=message.key, value=message.to_bytes(), on_delivery=report.record)
        except (BufferError, KafkaException) as exc:
            raise DeliveryError(f"could not enqueue: {exc}") from exc
        timeout_s = self.message_timeout_s + self.ACK_GRACE_S
        if not report.done.wait(timeout_s):
            raise DeliveryError(f"no acknowledgement within {timeout_s}s")
        if report.error is not None:
            raise DeliveryError(str(report.error))

    def _start_reporter(self) -> None:
        """Started by the first send_and_wait: a producer used only through send() and flush()
        (ConsumerRunner) keeps serving its reports in its own thread."""
        with self._reporter_lock:
            if self._reporter is None:
                self._reporter = threading.Thread(
                    target=self._serve_delivery_reports, name="kafka-delivery-reports", daemon=True
                )
                self._reporter.start()

    def _serve_delivery_reports(self) -> None:
        while not self._closing.is_set():
            try:
                self._producer.poll(self.REPORT_POLL_S)
            except Exception:  # the waiters depend on this thread: it must keep going
                log.exception("serving Kafka delivery reports failed; serving on")
                self._closing.wait(self.REPORT_POLL_S)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the delivery-report thread (after a last flush); for a producer that is done."""
        try:
            self._producer.flush(timeout_s)
        finally:
            self._closing.set()
            if self._reporter is not None:
                self._reporter.join(timeout_s)

    def flush(self, timeout_s: float = 30.0) -> None:
        remaining = self._producer.flush(timeout_s)
        failures, self._failures = self._failures, []
        if remaining or failures:
            raise DeliveryError(f"{remaining} unacknowledged, failures: {failures}")


def position(msg: Message) -> Where:
    """Topic, partition and offset of a consumed message (the client types them as optional)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("not a consumed message: it has no topic, partition or offset")
    return topic, partition, offset


def transient_backoff_s(outages: int) -> float:
    """Wait before retrying after the n-th consecutive outage (1, 2, ...): doubling, capped."""
    return min(MAX_TRANSIENT_BACKOFF_S, HANDLER_FAILURE_BACKOFF_S * 2 ** max(0, outages - 1))


def handler_backoff_s(failures: int) -> float:
    """Wait before handing a message back to a handler that failed on it n times."""
    return HANDLER_FAILURE_BACKOFF_S * failures


def gives_up(handler_failures: int) -> bool:
    """A handler that failed this often on one message will not succeed: stop retrying it."""
    return handler_failures >= MAX_HANDLER_FAILURES


def checked_outputs(outputs: Any) -> list[Output]:
    """What a handler returned, as a list; anything else is the handler's bug (a handler failure)."""
    checked = list(outputs)
    for output in checked:
        if not (
            isinstance(output, tuple)
            and len(output) == 2
            and isinstance(output[0], str)
            and isinstance(output[1], (PipelineMessage, DeadLetter))
        ):
            raise TypeError(f"a handler must return (topic, message) pairs, got {output!r:.200}")
    return checked


@dataclass
class PausedPartitions:
    """Partitions held back until a time; resumed by the poll loop, so the session stays alive."""

    due: dict[tuple[str, int], float] = field(default_factory=dict)

    def hold(self, consumer: Consumer, msg: Message, until: float) -> None:
        topic, partition, offset = position(msg)
        tp = TopicPartition(topic, partition, offset)
        consumer.pause([tp])
        consumer.seek(tp)  # the held message is delivered again on resume
        self.due[(topic, partition)] = until

    def resume_due(self, consumer: Consumer, now: float) -> None:
        ready = [key for key, until in self.due.items() if until <= now]
        if ready:
            consumer.resume([TopicPartition(t, p) for t, p in ready])
            for key in ready:
                del self.due[key]

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self.due.pop((tp.topic, tp.partition), None)


class Heartbeat:
    """Touches a file at most every few seconds, so a healthcheck can tell the loop is alive."""

    def __init__(self, path: str | None, every_s: float = 5.0) -> None:
        self.path, self.every_s, self._last = path, every_s, 0.0

    def beat(self) -> None:
        now = time.monotonic()
        if self.path and now - self._last >= self.every_s:
            self._last = now
            try:
                with open(self.path, "a"):
                    os.utime(self.path)
            except OSError as exc:  # a liveness file we cannot touch must not stop the work
                log.warning("cannot touch the liveness file", extra={"path": self.path, "error": str(exc)})


class StopFlag:
    """Set by SIGTERM/SIGINT: the loop finishes the message in hand, flushes, commits and exits."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def install(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._event.set())
        return self

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float) -> bool:
        """Sleep up to `timeout_s`, waking at once when the flag is set."""
        return self._event.wait(timeout_s)


def dropped_out_of_group(own_member_id: str | None, members: set[str] | None) -> bool:
    """True when the broker answered with the group's members and this consumer is not among them.

    An idle member (more members than partitions) has no partitions either, but is listed; an
    unanswered question (`members` None) proves nothing.
    """
    return members is not None and own_member_id not in members


def group_members(admin: AdminClient, group_id: str, timeout_s: float = 5.0) -> set[str] | None:
    """The member ids the broker lists for `group_id`, or None when it does not answer."""
    try:
        futures = admin.describe_consumer_groups([group_id], request_timeout=timeout_s)
        description = futures[group_id].result(timeout=timeout_s)
    except Exception:  # noqa: BLE001 - the broker away or busy: nothing can be concluded
        return None
    return {member.member_id for member in description.members}


def consumer_config(bootstrap_servers: str, group_id: str, client_id: str) -> dict:
    return {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        "client.id": client_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "max.poll.interval.ms": 600000,
        "session.timeout.ms": 10000,  # a killed consumer's partitions move on within seconds
        "partition.assignment.strategy": "cooperative-sticky",
    }


def _close_quietly(consumer: Consumer) -> None:
    try:
        consumer.close()
    except Exception:
        log.warning("closing the old Kafka consumer failed", exc_info=True)


@dataclass
class _Outcome:
    """What one consumed message leads to: the outputs to produce, then the commit."""

    outputs: list[Output]
    message: PipelineMessage | None = None  # for the delivered hook; None for dead letters


class ConsumerRunner:
    """Consumes `source_topics` until `stop` is set; each message goes through `handle`."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        group_id: str,
        client_id: str,
        stage: str,
        source_topics: list[str],
        handler: Handler,
        stop: StopFlag,
        dead_letter_handler: DeadLetterHandler | None = None,
        producer: ConfirmedProducer | None = None,
        liveness_file: str | None = None,
        on_delivered: DeliveredHook | None = None,
        consumer: Consumer | None = None,
        clock: Callable[[], float] = time.time,
        consumer_factory: Callable[[], Consumer] | None = None,
        group_members_probe: Callable[[], set[str] | None] | None = None,
    ) -> None:
        if topics.DEAD_LETTER in source_topics and dead_letter_handler is None:
            raise ValueError(f"{stage} consumes {topics.DEAD_LETTER} but has no dead_letter_handler")
        self.group_id, self.stage, self.source_topics = group_id, stage, source_topics
        self.handler, self.dead_letter_handler, self.on_delivered = handler, dead_letter_handler, on_delivered
        metrics.start_consumer_series(stage, source_topics, [reason.value for reason in DeadLetterReason])
        self.stop, self.clock = stop, clock
        config = consumer_config(bootstrap_servers, group_id, client_id)
        self._new_consumer = consumer_factory or (lambda: Consumer(config))
        self.consumer = consumer or self._new_consumer()
        admin: list[AdminClient] = []  # made on first use: most consumers never need it

        def probe_members() -> set[str] | None:
            if not admin:
                admin.append(AdminClient({"bootstrap.servers": bootstrap_servers}))
            members = group_members(admin[0], group_id, timeout_s=MEMBERSHIP_PROBE_TIMEOUT_S)
            if members is None:  # a client made while the broker was away may never recover either
                admin.clear()
            return members

        self._group_members = group_members_probe or probe_members
        self._last_heard = clock()  # when a message last arrived, or the broker was last asked
        self.producer = producer or ConfirmedProducer(bootstrap_servers, client_id)
        self.paused = PausedPartitions()
        self.heartbeat = Heartbeat(liveness_file)
        # Two counters per message, because they mean different things: an outage is waited out
        # forever; a handler that keeps failing on a message is given up on.
        self.outages: dict[Where, int] = {}
        self.handler_failures: dict[Where, int] = {}
        # Outputs a handler returned that the broker has not acknowledged yet: when the message comes
        # back they are sent again instead of running the handler (and its LLM call) a second time.
        self.unacknowledged: dict[Where, _Outcome] = {}
        self.uncommitted: dict[tuple[str, int], int] = {}  # next offset per partition, commit failed
        self._commit_retry_at = 0.0
        self._assigned: list[TopicPartition] = []

    @classmethod
    def for_service(cls, settings: ServiceSettings, *, client_id: str, **options: Any) -> ConsumerRunner:
        """A runner as every service runs one: the settings' broker and liveness file; SIGTERM stops it."""
        return cls(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=client_id,
            liveness_file=settings.liveness_file,
            stop=StopFlag().install(),
            **options,
        )

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        self._subscribe()
        log.info("consumer started", extra={"group": self.group_id, "topics": self.source_topics})
        try:
            while not self.stop.is_set():
                self.poll_once()
        finally:
            self._shutdown()

    def _subscribe(self) -> None:
        self.consumer.subscribe(
            self.source_topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def poll_once(self, timeout_s: float = 0.5) -> None:
        """One turn of the loop: housekeeping, then at most one message. Never raises for a message."""
        self.heartbeat.beat()
        metrics.mark_poll(self.stage)
        try:
            self._check_membership()
            self._resume_assigned()
            self._retry_commits()
            self.paused.resume_due(self.consumer, self.clock())
            msg = self.consumer.poll(timeout_s)
        except Exception as exc:  # mostly the broker being away; the client reconnects by itself
            log.warning(
                "consumer call failed; retrying", extra={"group": self.group_id, "error": str(exc)}, exc_info=exc
            )
            metrics.CONSUMER_OUTAGES.labels(self.stage).inc()
            self.stop.wait(1.0)
            return
        if msg is None:
            return
        self._last_heard = self.clock()
        error = msg.error()
        if error is not None:
            if error.fatal():  # the client is unusable: exit so the supervisor starts a fresh one
                raise KafkaException(error)
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error", extra={"group": self.group_id, "error": str(error)})
            return
        try:
            self.handle(msg)
        except Exception as exc:  # noqa: BLE001 - one message must never end the loop
            self._hold_after_surprise(msg, exc)

    def handle(self, msg: Message) -> None:
        """One consumed message: decode, call the handler, produce, flush, then commit."""
        where = position(msg)
        outcome = self.unacknowledged.get(where)
        if outcome is None:
            if where[0] == topics.DEAD_LETTER:
                outcome = self._outcome_of_dead_letter(msg)
            else:
                outcome = self._outcome_of_message(msg)
        if outcome is not None:
            self._deliver(msg, outcome)

    # -- deciding what a message leads to ---------------------------------------------------------

    def _outcome_of_message(self, msg: Message) -> _Outcome | None:
        topic = position(msg)[0]
        try:
            message = PipelineMessage.from_bytes(msg.value())
        except Exception as exc:  # noqa: BLE001 - whatever the bytes do, they become a dead letter
            return self._dead_letter(msg, DeadLetterReason.DECODE, f"unparseable: {exc}")
        try:
            outputs = checked_outputs(self.handler(message, topic))
        except Exception as exc:  # noqa: BLE001 - classified by _after_failure
            return self._after_handler_failure(msg, message, exc)
        return _Outcome(outputs, message)

    def _after_handler_failure(self, msg: Message, message: PipelineMessage, exc: Exception) -> _Outcome | None:
        """The handler raised on `message`: arrange its retry (None), or dead-letter it once given up on."""
        context = {"question_id": message.question_id, "run": message.run, "attempt": message.attempt}
        if not self._after_failure(msg, exc, context):
            return None
        log.error("handler failed repeatedly; dead-lettering", extra={**context, **self._where_extra(msg)})
        reason = f"handler failed {MAX_HANDLER_FAILURES} times: {exc}"
        return self._dead_letter(msg, DeadLetterReason.HANDLER, reason, message)

    def _outcome_of_dead_letter(self, msg: Message) -> _Outcome | None:
        topic = position(msg)[0]
        try:
            letter = DeadLetter.from_bytes(msg.value())
        except Exception as exc:  # noqa: BLE001 - a bad dead letter is skipped, never dead-lettered again
            log.error(
                "undecodable dead letter skipped",
                extra={"question_id": _key_text(msg), **self._where_extra(msg), "reason": str(exc)[:500]},
            )
            return _Outcome([])
        context = {"question_id": letter.question_id, "stage": letter.stage}
        assert self.dead_letter_handler is not None  # checked in __init__
        try:
            outputs = checked_outputs(self.dead_letter_handler(letter, topic))
        except Exception as exc:  # noqa: BLE001 - classified by _after_failure
            if not self._after_failure(msg, exc, context):
                return None
            # Dead-lettering a dead letter would loop; it stays on the topic for a replay.
            log.error("dead-letter handler failed repeatedly; skipped", extra={**context, **self._where_extra(msg)})
            return _Outcome([])
        return _Outcome(outputs)

    def _after_failure(self, msg: Message, exc: Exception, context: dict) -> bool:
        """Arrange the retry a handler's exception calls for; True when the handler is given up on."""
        where = position(msg)
        if isinstance(exc, RetryLater):
            self._hold(msg, exc.due)
            return False
        if isinstance(exc, (TransientError, DeliveryError)):  # a dependency is down: wait it out
            self._wait_out_outage(msg, exc, context)
            return False
        failures = self.handler_failures.get(where, 0) + 1
        self.handler_failures[where] = failures
        metrics.CONSUMER_HANDLER_FAILURES.labels(self.stage).inc()
        if gives_up(failures):
            return True
        log.warning(
            "handler failed; will retry",
            extra={**context, **self._where_extra(msg), "failures": failures, "error": str(exc)[:500]},
            exc_info=exc,
        )
        self._hold(msg, self.clock() + handler_backoff_s(failures))
        return False

    def _dead_letter(
        self, msg: Message, category: DeadLetterReason, reason: str, message: PipelineMessage | None = None
    ) -> _Outcome:
        where = position(msg)
        letter = DeadLetter.wrap(
            msg.value(),
            stage=self.stage,
            reason=reason,
            source_topic=where[0],
            partition=where[1],
            offset=where[2],
            key=msg.key(),
            message=message,
        )
        log.error(
            "sending to dead-letter",
            extra={"question_id": letter.question_id, **self._where_extra(msg), "reason": letter.reason[:500]},
        )
        metrics.DEAD_LETTERS.labels(self.stage, category.value).inc()
        return _Outcome([(topics.DEAD_LETTER, letter)])

    # -- producing and committing -----------------------------------------------------------------

    def _deliver(self, msg: Message, outcome: _Outcome) -> None:
        where = position(msg)
        try:
            for topic, out in outcome.outputs:
                self.producer.send(topic, out)
            if outcome.outputs:
                self.producer.flush()
        except (DeliveryError, KafkaException) as exc:  # the broker is away: hold the message, keep the outputs
            self.unacknowledged[where] = outcome
            self._wait_out_outage(msg, exc, {"question_id": _question_of(outcome, msg)})
            return
        self.unacknowledged.pop(where, None)
        self.outages.pop(where, None)
        self.handler_failures.pop(where, None)
        metrics.CONSUMER_MESSAGES.labels(self.stage, where[0]).inc()
        if outcome.message is not None and self.on_delivered is not None:
            try:
                self.on_delivered(outcome.message, outcome.outputs)
            except Exception as exc:  # noqa: BLE001 - bookkeeping after delivery must not block the commit
                log.warning(
                    "after-delivery hook failed",
                    extra={"question_id": outcome.message.question_id, "error": str(exc)[:500]},
                )
        self._commit(where)

    def _wait_out_outage(self, msg: Message, exc: Exception, context: dict) -> None:
        where = position(msg)
        outages = self.outages.get(where, 0) + 1
        self.outages[where] = outages
        metrics.CONSUMER_OUTAGES.labels(self.stage).inc()
        delay = transient_backoff_s(outages)
        log.warning(
            "dependency unavailable; will retry",
            extra={**context, **self._where_extra(msg), "outages": outages, "retry_in_s": delay, "error": str(exc)},
        )
        self._hold(msg, self.clock() + delay)

    def _hold(self, msg: Message, until: float) -> None:
        """Hand `msg` back at `until`: its partition pauses and rewinds to it (one message at a time)."""
        self.paused.hold(self.consumer, msg, until)

    def _commit(self, where: Where) -> None:
        topic, partition, offset = where
        self.uncommitted[(topic, partition)] = offset + 1
        self._commit_retry_at = 0.0
        self._retry_commits()

    def _retry_commits(self) -> None:
        """Commit every offset still owed; a failure (broker away, rebalance) is retried later."""
        if not self.uncommitted or self.clock() < self._commit_retry_at:
            return
        owed = dict(self.uncommitted)
        try:
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in owed.items()], asynchronous=False)
        except KafkaException as exc:
            self._commit_retry_at = self.clock() + COMMIT_RETRY_S
            log.warning("commit failed; will retry", extra={"group": self.group_id, "error": str(exc)})
            return
        for key, offset in owed.items():
            if self.uncommitted.get(key) == offset:
                del self.uncommitted[key]

    def _hold_after_surprise(self, msg: Message, exc: Exception) -> None:
        """A failure outside every expected path: log it, and give the message another go later."""
        log.error(
            "unexpected error while processing a message; will retry",
            extra={"question_id": _key_text(msg), "error": str(exc)[:500]},
            exc_info=exc,
        )
        try:
            where = position(msg)
            surprises = self.outages.get(where, 0) + 1
            self.outages[where] = surprises
            metrics.CONSUMER_OUTAGES.labels(self.stage).inc()  # retried like an outage, so counted as one
            self._hold(msg, self.clock() + transient_backoff_s(surprises))
        except Exception:  # even that failed; the loop goes on (the offset stays uncommitted)
            log.exception("could not hold the message back")

    # -- rebalances -------------------------------------------------------------------------------

    def _check_membership(self) -> None:
        """Rebuild the client when it fell out of its group for good.

        Seen under `make chaos`: after Kafka was frozen past the session timeout, librdkafka timed the
        session out, queued its rejoin and never sent it; the process polled on, a member of nothing,
        while its partitions' questions waited. Sometimes it even kept its assignment while the broker
        showed the group EMPTY, so the assignment proves nothing: a consumer that got no message for
        MEMBERSHIP_CHECK_S asks the broker whether it is still a member, and asks again every
        MEMBERSHIP_CHECK_S while it stays quiet.
        """
        now = self.clock()
        if now - self._last_heard < MEMBERSHIP_CHECK_S:
            return
        self._last_heard = now  # the next question in MEMBERSHIP_CHECK_S
        own_id = self.consumer.memberid()
        members = self._group_members()
        if members is None:
            log.warning("could not ask the broker about this consumer's group", extra={"group": self.group_id})
        if dropped_out_of_group(own_id, members):
            log.error(
                "consumer is no longer a member of its group; rebuilding the Kafka client",
                extra={"group": self.group_id, "member_id": own_id, "assigned": len(self.consumer.assignment())},
            )
            self._rebuild_consumer()

    def _rebuild_consumer(self) -> None:
        metrics.CONSUMER_REBUILDS.labels(self.stage).inc()
        old, self.consumer = self.consumer, self._new_consumer()
        # It holds no partitions: what the old client paused or could not commit is not ours any more.
        self.paused, self.uncommitted, self._assigned = PausedPartitions(), {}, []
        # close() talks to the coordinator, which is what went wrong: never let it block the loop.
        threading.Thread(target=_close_quietly, args=(old,), daemon=True).start()
        self._subscribe()

    def _is_replaced(self, consumer: Consumer) -> bool:
        """A rebalance event of a client already replaced by _rebuild_consumer: its close() revokes
        what it held, on the closing thread, while the new client may hold the same partitions.
        What the old client held was forgotten when it was replaced; its events change nothing."""
        return consumer is not self.consumer

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._is_replaced(consumer):
            return
        # librdkafka keeps the application's pause flag across a rebalance: a partition held when it
        # was revoked would come back paused with no due time to resume it. Resumed on the next turn
        # of the loop, once the assignment is in place.
        self.paused.forget(partitions)
        self._assigned.extend(partitions)

    def _resume_assigned(self) -> None:
        if self._assigned:
            self.consumer.resume([TopicPartition(tp.topic, tp.partition) for tp in self._assigned])
            self._assigned = []  # only once resumed: a failure is retried on the next turn

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._is_replaced(consumer):
            return
        self._commit_retry_at = 0.0
        self._retry_commits()  # last chance to commit what this consumer finished
        self._forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._is_replaced(consumer):
            return
        self._forget(partitions)  # the group moved on: our offsets cannot be committed any more

    def _forget(self, partitions: list[TopicPartition]) -> None:
        self.paused.forget(partitions)
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for key in list(self.uncommitted):
            if key in gone:
                del self.uncommitted[key]
        for table in (self.outages, self.handler_failures, self.unacknowledged):
            for where in [w for w in table if (w[0], w[1]) in gone]:
                del table[where]

    def _shutdown(self) -> None:
        try:
            self.producer.flush(10)
        except (DeliveryError, KafkaException):
            log.exception("pending messages not acknowledged at shutdown; their sources stay uncommitted")
        self._commit_retry_at = 0.0
        try:
            self._retry_commits()
        finally:
            self.consumer.close()
            log.info("consumer stopped", extra={"group": self.group_id})

    @staticmethod
    def _where_extra(msg: Message) -> dict:
        return {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}


def _key_text(msg: Message) -> str | None:
    key = msg.key()
    return key.decode("utf-8", "replace")[:256] if isinstance(key, bytes) else None


def _question_of(outcome: _Outcome, msg: Message) -> str | None:
    return outcome.message.question_id if outcome.message is not None else _key_text(msg)


def ensure_topics(
    bootstrap_servers: str, names: Iterable[str] = topics.ALL_TOPICS, partitions: int = DEFAULT_PARTITIONS
) -> list[str]:
    """Create missing topics; returns the ones created. Existing topics are left as they are."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    existing = set(admin.list_topics(timeout=15).topics)
    wanted = [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names if name not in existing]
    if not wanted:
        return []
    for future in admin.create_topics(wanted, request_timeout=15).values():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return [t.topic for t in wanted]


def grow_partitions(
    bootstrap_servers: str, names: Iterable[str] = topics.ALL_TOPICS, partitions: int = DEFAULT_PARTITIONS
) -> list[str]:
    """Give every topic with fewer partitions `partitions` (KAFKA_PARTITIONS raised for more consumers
    or Flink subtasks); returns the ones grown. Kafka never shrinks a topic: more are left as they are.
    A question's next message may then land on another partition than its last one; a question has
    one message in the pipeline at a time, so its order holds (run it while the pipeline is idle)."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    listed = admin.list_topics(timeout=15).topics
    grow = [
        NewPartitions(name, partitions)
        for name in names
        if name in listed and len(listed[name].partitions) < partitions
    ]
    for future in admin.create_partitions(grow, request_timeout=15).values() if grow else []:
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.INVALID_PARTITIONS:  # another init grew it first
                raise
    return [g.topic for g in grow]
