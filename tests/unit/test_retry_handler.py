from datetime import timedelta

import pytest

from common import topics
from common.kafka import RetryLater
from common.messages import LLMError, PipelineMessage
from common.policy import RetryPolicy
from retry_consumers.worker import retry_handler


class RecordingProducer:
    def __init__(self):
        self.sent = []

    def send(self, topic, message):
        self.sent.append((topic, message))


def failed(retry_count: int) -> PipelineMessage:
    return PipelineMessage.new("q?").evolve(retry_count=retry_count, error=LLMError(status=503, kind="overload"))


def test_not_due_yet_hands_the_message_back_with_its_due_time():
    msg = failed(retry_count=2)
    handler = retry_handler(RetryPolicy(5, 5, exponential=True), clock=lambda: msg.updated_at.timestamp() + 1)
    with pytest.raises(RetryLater) as later:
        handler(msg, RecordingProducer(), topics.ERRORS_OVERLOAD)
    assert later.value.due == pytest.approx(msg.updated_at.timestamp() + 20)


def test_due_message_is_republished_with_one_more_retry():
    msg = failed(retry_count=1)
    producer = RecordingProducer()
    handler = retry_handler(RetryPolicy(5, 5, exponential=True), clock=lambda: msg.updated_at.timestamp() + 10)
    handler(msg, producer, topics.ERRORS_OVERLOAD)
    [(topic, out)] = producer.sent
    assert topic == topics.QUESTIONS_PENDING
    assert out.retry_count == 2 and out.error is None
    assert out.not_before == msg.updated_at + timedelta(seconds=10)


def test_exhausted_retries_fail_the_question():
    msg = failed(retry_count=5)
    producer = RecordingProducer()
    retry_handler(RetryPolicy(5, 5, exponential=True))(msg, producer, topics.ERRORS_OVERLOAD)
    [(topic, out)] = producer.sent
    assert topic == topics.LLM_RESPONSES_ERROR
    assert out.error.kind == "retries_exhausted" and out.error.status == 503
