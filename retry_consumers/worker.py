"""Waits out a failed LLM call, then re-publishes the question to questions-pending.

The wait never blocks the poll loop: a message that is not due yet pauses its partition until it
is (common.kafka.RetryLater), so the consumer keeps its group session while it waits. Each strategy
spends only its own budget (overload_retries or quota_retries on the message).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from common import metrics, topics
from common.kafka import ConsumerRunner, Output, RetryLater
from common.messages import PipelineMessage
from common.policy import RetryPolicy
from common.settings import PipelineSettings

log = logging.getLogger(__name__)

STRATEGIES: dict[str, tuple[str, str, Callable[[PipelineSettings], RetryPolicy]]] = {
    "overload": (topics.ERRORS_OVERLOAD, topics.GROUP_RETRY_OVERLOAD, lambda s: s.overload_policy),
    "quota": (topics.ERRORS_QUOTA, topics.GROUP_RETRY_QUOTA, lambda s: s.quota_policy),
}


def stage_of(strategy: str) -> str:
    return f"retry-{strategy}-consumer"


def retry_handler(policy: RetryPolicy, clock: Callable[[], float] = time.time):
    def handle(message: PipelineMessage, topic: str) -> list[Output]:
        spent = policy.spent(message)
        context = {
            "question_id": message.question_id,
            "retry_count": message.retry_count,
            f"{policy.kind.value}_retries": spent,
            "source": topic,
        }
        if policy.exhausted(spent):
            log.warning("retries exhausted; the question fails", extra=context)
            return [(topics.LLM_RESPONSES_ERROR, policy.given_up(message, topic))]
        due = policy.due_at(message)
        if clock() < due:
            raise RetryLater(due)
        log.info("re-publishing after delay", extra={**context, "delay_s": policy.wait_s(message)})
        retried = policy.retried(message, due)
        metrics.observe_retry(policy.kind.value, retried.retry_count)
        return [(topics.QUESTIONS_PENDING, retried)]

    return handle


def run(strategy: str, settings: PipelineSettings) -> None:
    source, group, policy_of = STRATEGIES[strategy]
    policy = policy_of(settings)
    metrics.start_retry_series(policy.kind.value, policy.max_retries)
    metrics.serve_worker_metrics(settings)
    ConsumerRunner.for_service(
        settings,
        group_id=group,
        client_id=stage_of(strategy),
        stage=stage_of(strategy),
        source_topics=[source],
        handler=retry_handler(policy),
    ).run()
