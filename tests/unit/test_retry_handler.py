from datetime import timedelta

import pytest

from common import topics
from common.kafka import RetryLater
from common.messages import LLMError
from common.policy import FailureKind, RetryPolicy
from retry_consumers.worker import retry_handler
from tests.fakes import question

OVERLOAD = RetryPolicy(FailureKind.OVERLOAD, base_delay_s=5, max_retries=5, exponential=True)
QUOTA = RetryPolicy(FailureKind.QUOTA, base_delay_s=60, max_retries=2, exponential=False)


def failed(overload_retries: int = 0, quota_retries: int = 0, status: int = 503, kind="overload"):
    return question().evolve(
        retry_count=overload_retries + quota_retries,
        overload_retries=overload_retries,
        quota_retries=quota_retries,
        error=LLMError(status=status, kind=kind),
    )


def test_not_due_yet_hands_the_message_back_with_its_due_time():
    msg = failed(overload_retries=2)
    handler = retry_handler(OVERLOAD, clock=lambda: msg.updated_at.timestamp() + 1)
    with pytest.raises(RetryLater) as later:
        handler(msg, topics.ERRORS_OVERLOAD)
    assert later.value.due == pytest.approx(msg.updated_at.timestamp() + 20)


def test_due_message_is_republished_with_one_more_retry():
    msg = failed(overload_retries=1)
    handler = retry_handler(OVERLOAD, clock=lambda: msg.updated_at.timestamp() + 10)
    [(topic, out)] = handler(msg, topics.ERRORS_OVERLOAD)
    assert topic == topics.QUESTIONS_PENDING
    assert out.retry_count == 2 and out.overload_retries == 2 and out.error is None
    assert out.not_before == msg.updated_at + timedelta(seconds=10)


def test_exhausted_retries_fail_the_question():
    msg = failed(overload_retries=5)
    [(topic, out)] = retry_handler(OVERLOAD)(msg, topics.ERRORS_OVERLOAD)
    assert topic == topics.LLM_RESPONSES_ERROR
    assert out.error.kind == "retries_exhausted" and out.error.status == 503


def test_quota_retries_do_not_spend_the_overload_budget():
    msg = failed(overload_retries=4, quota_retries=2)  # 6 retries in all, only 4 of them overload
    handler = retry_handler(OVERLOAD, clock=lambda: msg.updated_at.timestamp() + 80)
    [(topic, out)] = handler(msg, topics.ERRORS_OVERLOAD)
    assert topic == topics.QUESTIONS_PENDING
    assert (out.retry_count, out.overload_retries, out.quota_retries) == (7, 5, 2)


def test_overload_retries_do_not_spend_the_quota_budget():
    msg = failed(overload_retries=3, quota_retries=1, status=429, kind="quota")
    handler = retry_handler(QUOTA, clock=lambda: msg.updated_at.timestamp() + 60)
    [(topic, out)] = handler(msg, topics.ERRORS_QUOTA)
    assert topic == topics.QUESTIONS_PENDING
    assert (out.retry_count, out.overload_retries, out.quota_retries) == (5, 3, 2)
    [(topic, _)] = retry_handler(QUOTA)(out.evolve(error=LLMError(status=429, kind="quota")), topics.ERRORS_QUOTA)
    assert topic == topics.LLM_RESPONSES_ERROR  # now the quota budget (2) is spent
