"""Persists terminal outcomes: validated (and cached), low-quality (kept, flagged), failed, and dead
letters (the question ends `failed` with the reason). The first terminal outcome of a run wins."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

import psycopg
from psycopg_pool import PoolTimeout

from common import metrics, topics
from common.kafka import ConsumerRunner, DeadLetterHandler, Handler, Output, TransientError
from common.messages import DeadLetter, PipelineMessage
from common.topics import TERMINAL_STATUS_BY_TOPIC, Status
from storage_service.cache import AnswerCache, validated_result
from storage_service.config import StorageSettings
from storage_service.repository import Repository
from storage_service.rules import OutcomeResult, dead_letter_target, original_message

log = logging.getLogger(__name__)
OUTCOME_TOPICS = [topics.VALIDATED_RESPONSES, topics.LOW_QUALITY_RESPONSES, topics.LLM_RESPONSES_ERROR]
STAGE = "storage-consumer"


@contextmanager
def database_down_is_transient() -> Iterator[None]:
    """The database being unreachable is not the message's fault: the runner retries it, however
    long, and never dead-letters it. Any other error (a value PostgreSQL refuses) is the message's."""
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise TransientError(f"database unavailable: {exc}") from exc


def outcome_handler(repo: Repository, cache: AnswerCache) -> Handler:
    def handle(message: PipelineMessage, topic: str) -> Sequence[Output]:
        status = TERMINAL_STATUS_BY_TOPIC[topic]
        with database_down_is_transient():
            result = repo.record_outcome(message, status)
            if result is OutcomeResult.APPLIED and status is Status.VALIDATED:
                cache_stored_answer(repo, cache, message)
        record_outcome_metrics(message, status, result)
        log.info(
            outcome_log_line(result),
            extra={
                "question_id": message.question_id,
                "run": message.run,
                "status": status.value,
                "result": result.value,
                "attempt": message.attempt,
                "f1": message.score.f1 if message.score else None,
            },
        )
        return []

    return handle


def record_outcome_metrics(message: PipelineMessage | None, status: Status, result: OutcomeResult) -> None:
    """Every outcome by status and result; the scores, attempts and time taken of applied ones only
    (of a dead letter: when it still holds its message)."""
    metrics.observe_outcome(status.value, result.value)
    if result is OutcomeResult.APPLIED and message is not None:
        metrics.observe_applied_outcome(message, status.value, datetime.now(UTC))


def cache_stored_answer(repo: Repository, cache: AnswerCache, message: PipelineMessage) -> None:
    """Cache what the database holds (never the message itself), and only if it is this run's
    validated answer."""
    row = repo.question(message.question_id)
    if row is not None and row["status"] == Status.VALIDATED and row["runs"] == message.run:
        cache.put(message.question_id, validated_result(row))


def outcome_log_line(result: OutcomeResult) -> str:
    return {
        OutcomeResult.APPLIED: "outcome stored",
        OutcomeResult.DUPLICATE: "duplicate outcome of a finished run counted, not applied",
        OutcomeResult.OLDER_RUN: "outcome of an older run ignored",
        OutcomeResult.UNKNOWN_QUESTION: "dead letter of an unknown question ignored",
    }[result]


def dead_letter_handler(repo: Repository) -> DeadLetterHandler:
    def handle(letter: DeadLetter, _topic: str) -> Sequence[Output]:
        original = original_message(letter)
        question_id, run = dead_letter_target(letter, original)
        with database_down_is_transient():
            result = repo.record_dead_letter(letter, original)
        record_outcome_metrics(original, Status.FAILED, result)
        log.info(
            outcome_log_line(result) if result is not OutcomeResult.APPLIED else "question failed by a dead letter",
            extra={
                "question_id": question_id,
                "run": run,
                "result": result.value,
                "stage": letter.stage,
                "source_topic": letter.source_topic,
                "reason": letter.reason,
            },
        )
        return []

    return handle


def run(settings: StorageSettings) -> None:
    metrics.start_outcome_series(settings.max_attempts)
    metrics.serve_worker_metrics(settings)
    repo = Repository(settings.database_url, pool_size=2)
    repo.open()
    cache = AnswerCache(settings.redis_url, settings.cache_ttl_s)
    try:
        ConsumerRunner.for_service(
            settings,
            group_id=topics.GROUP_STORAGE,
            client_id=STAGE,
            stage=STAGE,
            source_topics=[*OUTCOME_TOPICS, topics.DEAD_LETTER],
            handler=outcome_handler(repo, cache),
            dead_letter_handler=dead_letter_handler(repo),
        ).run()
    finally:
        repo.close()
