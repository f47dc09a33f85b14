"""The LLM-call ledger (common.ledger) against the real PostgreSQL and the questions table."""

from __future__ import annotations

import uuid

import psycopg

from common.ledger import CallLedger, QuestionState, SkipReason, skip_reason
from tests.fakes import question


def insert_question(database_url: str, question_id: str, status: str, runs: int) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO questions (question_id, question_text, status, runs) VALUES (%s, 'q?', %s, %s)",
            (question_id, status, runs),
        )


def delete_question(database_url: str, question_id: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM llm_calls WHERE question_id = %s", (question_id,))
        conn.execute("DELETE FROM questions WHERE question_id = %s", (question_id,))


def test_an_answered_step_is_skipped_and_marking_is_idempotent(stack):
    message = question(f"ledger {uuid.uuid4().hex}?")
    ledger = CallLedger(stack.database_url, consumer="it")
    insert_question(stack.database_url, message.question_id, "pending", 1)
    try:
        assert ledger.state(message) == QuestionState(status="pending", runs=1, answered=False)
        ledger.mark_answered(message, "llm-responses-success")
        ledger.mark_answered(message, "llm-responses-success")  # a redelivery marks again: no error
        assert skip_reason(message, ledger.state(message)) is SkipReason.ALREADY_ANSWERED
        next_retry = message.evolve(retry_count=1, overload_retries=1)
        assert skip_reason(next_retry, ledger.state(next_retry)) is None  # another step of the chain
    finally:
        ledger.close()
        delete_question(stack.database_url, message.question_id)


def test_finished_and_superseded_runs_are_skipped(stack):
    message = question(f"ledger {uuid.uuid4().hex}?")
    ledger = CallLedger(stack.database_url, consumer="it")
    insert_question(stack.database_url, message.question_id, "low_quality", 2)
    try:
        assert skip_reason(message.evolve(run=2), ledger.state(message.evolve(run=2))) is SkipReason.TERMINAL
        assert skip_reason(message, ledger.state(message)) is SkipReason.OLDER_RUN
        assert skip_reason(message.evolve(run=3), ledger.state(message.evolve(run=3))) is None
    finally:
        ledger.close()
        delete_question(stack.database_url, message.question_id)


def test_an_unknown_question_is_not_skipped(stack):
    message = question(f"ledger {uuid.uuid4().hex}?")
    ledger = CallLedger(stack.database_url, consumer="it")
    try:
        assert ledger.state(message) == QuestionState(status=None, runs=None, answered=False)
    finally:
        ledger.close()
