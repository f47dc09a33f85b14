"""The one in-memory Kafka consumer, producer and message for unit tests of the consumer runner, its
handlers and the HTTP apps (integration and e2e tests use the real broker), and the JSON reply of the
tests' fake HTTP servers."""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from confluent_kafka import KafkaError, KafkaException

from common import topics
from common.kafka import ConsumerRunner, DeliveryError, StopFlag
from common.messages import PipelineMessage


class FakeMessage:
    """A consumed record, as confluent_kafka.Message shows it."""

    def __init__(
        self, value: bytes | None, topic: str = topics.QUESTIONS_PENDING, partition: int = 0, offset: int = 7, key=b"k"
    ):
        self._value, self._topic, self._partition, self._offset, self._key = value, topic, partition, offset, key

    def value(self):
        return self._value

    def key(self):
        return self._key

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def error(self):
        return None


def kafka_exception(code: int = KafkaError._TRANSPORT) -> KafkaException:
    return KafkaException(KafkaError(code))


class FakeConsumer:
    """Serves `messages` from poll() in order; when they run out it sets `stop` (ends run()).

    `commits` lists the offsets of the consumed messages a commit covered (committed position - 1).
    `on_poll(consumer, n)` runs inside the n-th poll (0-based), as librdkafka runs rebalance callbacks.
    """

    def __init__(self, messages=(), stop: StopFlag | None = None, on_poll: Callable | None = None):
        self.queue, self.stop, self.on_poll = list(messages), stop, on_poll
        self.commits: list[int] = []
        self.paused: list[tuple[str, int]] = []
        self.resumed: list[tuple[str, int]] = []
        self.seeks: list[int] = []
        self.fail_commits = 0
        self.polls = 0
        self.callbacks: dict[str, Callable] = {}
        self.closed = False
        self.assigned: list = []  # what assignment() answers
        self.member_id = "member-1"

    def subscribe(self, names, on_assign=None, on_revoke=None, on_lost=None):
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def poll(self, timeout=None):
        n, self.polls = self.polls, self.polls + 1
        if self.on_poll is not None:
            self.on_poll(self, n)
        if self.queue:
            return self.queue.pop(0)
        if self.stop is not None:
            self.stop.set()
        return None

    def commit(self, message=None, offsets=None, asynchronous=True):
        if self.fail_commits:
            self.fail_commits -= 1
            raise kafka_exception(KafkaError.REBALANCE_IN_PROGRESS)
        self.commits += [tp.offset - 1 for tp in offsets]

    def assignment(self):
        return list(self.assigned)

    def memberid(self):
        return self.member_id

    def pause(self, partitions):
        self.paused += [(tp.topic, tp.partition) for tp in partitions]

    def resume(self, partitions):
        self.resumed += [(tp.topic, tp.partition) for tp in partitions]

    def seek(self, tp):
        self.seeks.append(tp.offset)

    def close(self):
        self.closed = True


class FakeProducer:
    """`sent` holds what the 'broker' acknowledged: a flush that fails loses what it was flushing."""

    def __init__(self, fail_flushes: int = 0):
        self.sent: list[tuple[str, object]] = []
        self.pending: list[tuple[str, object]] = []
        self.fail_flushes = fail_flushes
        self.flushes = 0

    def send(self, topic, message):
        self.pending.append((topic, message))

    def send_and_wait(self, topic, message):
        """ConfirmedProducer's one-message send (POST /query, a replay): sent and flushed at once."""
        self.send(topic, message)
        self.flush()

    def flush(self, timeout_s=30.0):
        self.flushes += 1
        pending, self.pending = self.pending, []
        if self.fail_flushes:
            self.fail_flushes -= 1
            raise DeliveryError("broker away")
        self.sent += pending

    def topics(self) -> list[str]:
        return [topic for topic, _ in self.sent]


def reply_json(handler: BaseHTTPRequestHandler, status: int, body: object) -> None:
    """A fake HTTP server's answer: `body` as JSON with its length."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def runner(handler=None, *, messages=(), consumer=None, producer=None, clock=None, **kwargs) -> ConsumerRunner:
    """A ConsumerRunner over the fakes; `handler` defaults to 'produce nothing'."""
    stop = StopFlag()
    consumer = consumer or FakeConsumer(messages)
    consumer.stop = stop  # run() ends when the consumer has nothing more to give
    return ConsumerRunner(
        bootstrap_servers="unused:9092",
        group_id="test-group",
        client_id="test",
        stage=kwargs.pop("stage", "test-stage"),
        source_topics=kwargs.pop("source_topics", [topics.QUESTIONS_PENDING]),
        handler=handler or (lambda m, t: []),
        stop=stop,
        consumer=consumer,
        producer=producer or FakeProducer(),
        clock=clock or Clock(),
        **kwargs,
    )


def question(text: str = "q?", **changes) -> PipelineMessage:
    msg = PipelineMessage.new(text, "reference")
    return msg.evolve(**changes) if changes else msg
