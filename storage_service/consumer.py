"""Persists terminal outcomes: validated (and cached), low-quality (kept, flagged) and failed."""

from __future__ import annotations

import logging

import psycopg
from psycopg_pool import PoolTimeout

from common import topics
from common.kafka import ConfirmedProducer, StopFlag, TransientError, run_consumer
from common.messages import PipelineMessage
from storage_service.cache import AnswerCache, validated_result
from storage_service.config import StorageSettings
from storage_service.repository import TERMINAL_STATUS_BY_TOPIC, Repository

log = logging.getLogger(__name__)
OUTCOME_TOPICS = [topics.VALIDATED_RESPONSES, topics.LOW_QUALITY_RESPONSES, topics.LLM_RESPONSES_ERROR]


def outcome_handler(repo: Repository, cache: AnswerCache):
    def handle(message: PipelineMessage, _producer: ConfirmedProducer, topic: str) -> None:
        try:
            store(message, TERMINAL_STATUS_BY_TOPIC[topic])
        except (psycopg.OperationalError, PoolTimeout) as exc:  # the database is down, not the message bad
            raise TransientError(f"database unavailable: {exc}") from exc

    def store(message: PipelineMessage, status: str) -> None:
        if not repo.record_outcome(message, status):
            log.info("outcome of an older run ignored", extra={"question_id": message.question_id, "run": message.run})
            return
        if status == "validated":
            row = repo.question(message.question_id)
            if row is not None:
                cache.put(message.question_id, validated_result(row))
        log.info(
            "outcome stored",
            extra={
                "question_id": message.question_id,
                "status": status,
                "attempt": message.attempt,
                "f1": message.score.f1 if message.score else None,
            },
        )

    return handle


def run(settings: StorageSettings) -> None:
    repo = Repository(settings.database_url, pool_size=2)
    repo.open()
    cache = AnswerCache(settings.redis_url, settings.cache_ttl_s)
    try:
        run_consumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=topics.GROUP_STORAGE,
            client_id="storage-consumer",
            source_topics=OUTCOME_TOPICS,
            handler=outcome_handler(repo, cache),
            stop=StopFlag().install(),
            liveness_file=settings.liveness_file,
        )
    finally:
        repo.close()
