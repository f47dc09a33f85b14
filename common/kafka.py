"""Kafka client helpers: a producer with confirmed delivery, the one consumer loop, topic creation.

The consumer loop is at-least-once: an offset is committed only after everything the handler
produced for that message was acknowledged by the broker. Messages that cannot be parsed go to the
dead-letter topic with their raw bytes and the reason; they are never dropped.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from common import topics
from common.messages import MessageError, PipelineMessage, utc_now

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 3
MAX_HANDLER_FAILURES = 5
HANDLER_FAILURE_BACKOFF_S = 2.0
MAX_TRANSIENT_BACKOFF_S = 30.0


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


class ConfirmedProducer:
    """A producer whose `flush()` raises unless every message since the last flush was acknowledged."""

    def __init__(self, bootstrap_servers: str, client_id: str, message_timeout_s: float = 30.0) -> None:
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap_servers,
                "client.id": client_id,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                # After this the client gives up on a message for good and reports it failed.
                "message.timeout.ms": int(message_timeout_s * 1000),
            }
        )
        self.message_timeout_s = message_timeout_s
        self._failures: list[str] = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err}")

    def send(self, topic: str, message: PipelineMessage) -> None:
        self.send_raw(topic, message.key, message.to_bytes())

    def send_raw(self, topic: str, key: bytes | None, value: bytes, headers: list | None = None) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, headers=headers, on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: let it drain, then try again
                self._producer.poll(0.5)
        self._producer.poll(0)

    def send_and_wait(self, topic: str, message: PipelineMessage) -> None:
        """Produce one message and wait for its own delivery report (safe from many threads).

        The wait outlasts message.timeout.ms, so the report is definitive: a message reported
        failed will not be delivered later behind the caller's back.
        """
        timeout_s = self.message_timeout_s + 5
        done = threading.Event()
        outcome: dict[str, KafkaError | None] = {}

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            outcome["error"] = err
            done.set()

        try:
            self._producer.produce(topic, key=message.key, value=message.to_bytes(), on_delivery=on_delivery)
        except (BufferError, KafkaException) as exc:
            raise DeliveryError(f"could not enqueue: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        while not done.is_set() and time.monotonic() < deadline:
            self._producer.poll(0.05)
        if not done.is_set():
            raise DeliveryError(f"no acknowledgement within {timeout_s}s")
        if outcome["error"] is not None:
            raise DeliveryError(str(outcome["error"]))

    def flush(self, timeout_s: float = 30.0) -> None:
        remaining = self._producer.flush(timeout_s)
        failures, self._failures = self._failures, []
        if remaining or failures:
            raise DeliveryError(f"{remaining} unacknowledged, failures: {failures}")


def dead_letter_payload(msg: Message, reason: str) -> bytes:
    raw = msg.value() or b""
    envelope = {
        "schema_version": 1,
        "reason": reason,
        "source_topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "key": (msg.key() or b"").decode("utf-8", "replace"),
        "raw_base64": base64.b64encode(raw).decode("ascii"),
        "raw_text": raw.decode("utf-8", "replace"),
        "failed_at": utc_now().isoformat(),
    }
    return json.dumps(envelope, ensure_ascii=False).encode("utf-8")


# handler(message, producer, source_topic): produce what follows; raise RetryLater to wait.
Handler = Callable[[PipelineMessage, ConfirmedProducer, str], None]


def position(msg: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed message (the client types them as optional)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("not a consumed message: it has no topic, partition or offset")
    return topic, partition, offset


@dataclass
class _PausedPartitions:
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
            with open(self.path, "a"):
                os.utime(self.path)
            self._last = now


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


def run_consumer(
    *,
    bootstrap_servers: str,
    group_id: str,
    client_id: str,
    source_topics: list[str],
    handler: Handler,
    stop: StopFlag,
    producer: ConfirmedProducer | None = None,
    liveness_file: str | None = None,
) -> None:
    """Consume `source_topics` until `stop` is set, calling `handler` for each valid message."""
    heartbeat = Heartbeat(liveness_file)
    producer = producer or ConfirmedProducer(bootstrap_servers, client_id)
    paused = _PausedPartitions()
    failures: dict[tuple[str, int, int], int] = {}
    consumer = Consumer(consumer_config(bootstrap_servers, group_id, client_id))
    consumer.subscribe(
        source_topics, on_revoke=lambda c, parts: paused.forget(parts), on_lost=lambda c, parts: paused.forget(parts)
    )
    log.info("consumer started", extra={"group": group_id, "topics": source_topics})
    try:
        while not stop.is_set():
            heartbeat.beat()
            paused.resume_due(consumer, time.time())
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error", extra={"error": str(error)})
                continue
            _handle_one(consumer, producer, msg, handler, paused, failures)
    finally:
        try:
            producer.flush(10)
        except DeliveryError:
            log.exception("pending messages not acknowledged at shutdown; their sources stay uncommitted")
        consumer.close()
        log.info("consumer stopped", extra={"group": group_id})


def _handle_one(consumer, producer, msg, handler, paused, failures) -> None:
    where = (msg.topic(), msg.partition(), msg.offset())
    try:
        message = PipelineMessage.from_bytes(msg.value())
    except MessageError as exc:
        _dead_letter(consumer, producer, msg, f"unparseable: {exc}")
        return
    context = {"question_id": message.question_id, "topic": msg.topic(), "offset": msg.offset()}
    try:
        handler(message, producer, msg.topic())
        producer.flush()
    except RetryLater as later:
        paused.hold(consumer, msg, later.due)
        return
    except (TransientError, DeliveryError) as exc:  # a dependency is down: wait it out, however long
        count = failures.get(where, 0) + 1
        failures[where] = count
        delay = min(MAX_TRANSIENT_BACKOFF_S, HANDLER_FAILURE_BACKOFF_S * 2 ** (count - 1))
        log.warning(
            "dependency unavailable; will retry",
            extra={**context, "failures": count, "retry_in_s": delay, "error": str(exc)},
        )
        paused.hold(consumer, msg, time.time() + delay)
        return
    except Exception as exc:
        count = failures.get(where, 0) + 1
        failures[where] = count
        if count >= MAX_HANDLER_FAILURES:
            log.error("handler failed repeatedly; dead-lettering", extra=context, exc_info=True)
            failures.pop(where, None)
            _dead_letter(consumer, producer, msg, f"handler failed {count} times: {exc}")
        else:
            log.warning("handler failed; will retry", extra={**context, "failures": count, "error": str(exc)})
            paused.hold(consumer, msg, time.time() + HANDLER_FAILURE_BACKOFF_S * count)
        return
    failures.pop(where, None)
    consumer.commit(message=msg, asynchronous=False)


def _dead_letter(consumer: Consumer, producer: ConfirmedProducer, msg: Message, reason: str) -> None:
    log.error("sending to dead-letter", extra={"topic": msg.topic(), "offset": msg.offset(), "reason": reason})
    producer.send_raw(topics.DEAD_LETTER, msg.key(), dead_letter_payload(msg, reason))
    producer.flush()
    consumer.commit(message=msg, asynchronous=False)


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
