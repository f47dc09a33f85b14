"""The LLM-call ledger (common.ledger) against the real PostgreSQL and the questions table."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from common import topics
from common.ledger import CallLedger, QuestionState, SkipReason, skip_reason
from common.messages import PipelineMessage
from common.topics import Status
from tests.fakes import question


def insert_question(database_url: str, question_id: str, status: Status, runs: int) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO questions (question_id, question_text, status, runs) VALUES (%s, 'q?', %s, %s)",
            (question_id, status.value, runs),
        )


def delete_question(database_url: str, question_id: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM llm_calls WHERE question_id = %s", (question_id,))
        conn.execute("DELETE FROM questions WHERE question_id = %s", (question_id,))


@contextmanager
def ledger_for_new_question(
    database_url: str, status: Status | None = None, runs: int = 1
) -> Iterator[tuple[CallLedger, PipelineMessage]]:
    """A fresh question (with a questions row in `status`, or none) and a ledger; both gone afterwards."""
    message = question(f"ledger {uuid.uuid4().hex}?")
    ledger = CallLedger(database_url, consumer="it")
    try:
        if status is not None:
            insert_question(database_url, message.question_id, status, runs)
        yield ledger, message
    finally:
        ledger.close()
        delete_question(database_url, message.question_id)


def test_an_answered_step_is_skipped_and_marking_is_idempotent(stack):
    with ledger_for_new_question(stack.database_url, Status.PENDING, runs=1) as (ledger, message):
        assert ledger.state(message) == QuestionState(status="pending", runs=1, answered=False)
        ledger.mark_answered(message, topics.LLM_RESPONSES_SUCCESS)
        ledger.mark_answered(message, topics.LLM_RESPONSES_SUCCESS)  # a redelivery marks again: no error
        assert skip_reason(message, ledger.state(message)) is SkipReason.ALREADY_ANSWERED
        next_retry = message.evolve(retry_count=1, overload_retries=1)
        assert skip_reason(next_retry, ledger.state(next_retry)) is None  # another step of the chain


def test_finished_and_superseded_runs_are_skipped(stack):
    with ledger_for_new_question(stack.database_url, Status.LOW_QUALITY, runs=2) as (ledger, message):
        assert skip_reason(message.evolve(run=2), ledger.state(message.evolve(run=2))) is SkipReason.TERMINAL
        assert skip_reason(message, ledger.state(message)) is SkipReason.OLDER_RUN
        assert skip_reason(message.evolve(run=3), ledger.state(message.evolve(run=3))) is None


def test_an_unknown_question_is_not_skipped(stack):
    with ledger_for_new_question(stack.database_url) as (ledger, message):
        assert ledger.state(message) == QuestionState(status=None, runs=None, answered=False)
