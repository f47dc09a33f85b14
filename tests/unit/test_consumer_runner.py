"""The consumer loop's decisions for one message, with an in-memory consumer and producer."""

import json

import pytest

from common import topics
from common.kafka import MAX_HANDLER_FAILURES, DeliveryError, RetryLater, TransientError, _handle_one, _PausedPartitions
from common.messages import PipelineMessage


class FakeMessage:
    def __init__(self, value: bytes, topic=topics.QUESTIONS_PENDING, partition=0, offset=7):
        self._value, self._topic, self._partition, self._offset = value, topic, partition, offset

    def value(self):
        return self._value

    def key(self):
        return b"k"

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset


class FakeConsumer:
    def __init__(self):
        self.commits, self.paused, self.seeks = [], [], []

    def commit(self, message, asynchronous):
        self.commits.append(message.offset())

    def pause(self, partitions):
        self.paused += [(tp.topic, tp.partition) for tp in partitions]

    def seek(self, tp):
        self.seeks.append(tp.offset)


class FakeProducer:
    def __init__(self):
        self.raw = []

    def send_raw(self, topic, key, value, headers=None):
        self.raw.append((topic, value))

    def flush(self, timeout_s=30.0):
        pass


def run(handler, value=None, failures=None):
    consumer, producer, paused = FakeConsumer(), FakeProducer(), _PausedPartitions()
    msg = FakeMessage(PipelineMessage.new("q?").to_bytes() if value is None else value)
    failures = {} if failures is None else failures
    _handle_one(consumer, producer, msg, handler, paused, failures)
    return consumer, producer, paused, failures


def test_success_commits_the_offset():
    consumer, producer, paused, _ = run(lambda m, p, t: None)
    assert consumer.commits == [7] and not paused.due and not producer.raw


def test_unparseable_goes_to_dead_letter_with_raw_bytes_and_is_committed():
    consumer, producer, _, _ = run(lambda m, p, t: None, value=b"\x00garbage")
    [(topic, value)] = producer.raw
    envelope = json.loads(value)
    assert topic == topics.DEAD_LETTER and envelope["raw_base64"] == "AGdhcmJhZ2U="
    assert envelope["source_topic"] == topics.QUESTIONS_PENDING and envelope["offset"] == 7
    assert consumer.commits == [7]


def test_retry_later_pauses_and_rewinds_without_committing():
    def not_yet(m, p, t):
        raise RetryLater(due=1e12)

    consumer, _, paused, _ = run(not_yet)
    assert consumer.commits == [] and consumer.seeks == [7]
    assert paused.due[(topics.QUESTIONS_PENDING, 0)] == 1e12


@pytest.mark.parametrize("error", [TransientError("db down"), DeliveryError("broker down")])
def test_dependency_outages_are_retried_forever_never_dead_lettered(error):
    def down(m, p, t):
        raise error

    failures = {}
    for _ in range(MAX_HANDLER_FAILURES * 3):
        consumer, producer, paused, failures = run(down, failures=failures)
        assert consumer.commits == [] and producer.raw == [] and paused.due


def test_other_failures_are_retried_then_dead_lettered():
    def poison(m, p, t):
        raise ValueError("bug")

    failures = {}
    for _ in range(MAX_HANDLER_FAILURES - 1):
        consumer, producer, _, failures = run(poison, failures=failures)
        assert consumer.commits == [] and producer.raw == []
    consumer, producer, _, failures = run(poison, failures=failures)
    [(topic, value)] = producer.raw
    assert topic == topics.DEAD_LETTER and "handler failed" in json.loads(value)["reason"]
    assert consumer.commits == [7] and failures == {}
