"""Waits out a failed LLM call, then re-publishes the question to questions-pending.

The wait never blocks the poll loop: a message that is not due yet pauses its partition until it
is (common.kafka.RetryLater), so the consumer keeps its group session while it waits.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from common import topics
from common.kafka import ConfirmedProducer, RetryLater, StopFlag, run_consumer
from common.messages import LLMError, PipelineMessage
from common.policy import RetryPolicy
from common.settings import PipelineSettings

log = logging.getLogger(__name__)

STRATEGIES = {
    "overload": (topics.ERRORS_OVERLOAD, topics.GROUP_RETRY_OVERLOAD, lambda s: s.overload_policy),
    "quota": (topics.ERRORS_QUOTA, topics.GROUP_RETRY_QUOTA, lambda s: s.quota_policy),
}


def retry_handler(policy: RetryPolicy, clock=time.time):
    def handle(message: PipelineMessage, producer: ConfirmedProducer, topic: str) -> None:
        context = {"question_id": message.question_id, "retry_count": message.retry_count, "source": topic}
        if policy.exhausted(message.retry_count):
            log.warning("retries exhausted; the question fails", extra=context)
            previous = message.error.message if message.error else ""
            error = LLMError(
                status=message.error.status if message.error else None,
                kind="retries_exhausted",
                message=f"gave up after {message.retry_count} retries ({topic}): {previous}"[:500],
            )
            producer.send(topics.LLM_RESPONSES_ERROR, message.evolve(error=error))
            return
        due = message.updated_at.timestamp() + policy.delay_s(message.retry_count)
        if clock() < due:
            raise RetryLater(due)
        log.info("re-publishing after delay", extra={**context, "delay_s": policy.delay_s(message.retry_count)})
        producer.send(
            topics.QUESTIONS_PENDING,
            message.evolve(
                retry_count=message.retry_count + 1, error=None, not_before=datetime.fromtimestamp(due, timezone.utc)
            ),
        )

    return handle


def run(strategy: str, settings: PipelineSettings) -> None:
    source, group, policy_of = STRATEGIES[strategy]
    run_consumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group,
        client_id=f"retry-{strategy}-consumer",
        source_topics=[source],
        handler=retry_handler(policy_of(settings)),
        stop=StopFlag().install(),
        liveness_file=settings.liveness_file,
    )
