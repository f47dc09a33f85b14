"""The LLM-call ledger (common.ledger) against the real PostgreSQL and the questions table."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from common import topics
from common.kafka import DeliveryError
from common.ledger import CallLedger, QuestionState, SkipReason, skip_reason
from common.messages import PipelineMessage
from common.operations import DEAD_LETTER_ERROR_KIND, QuestionRow, QuestionStore
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


def fail_by_dead_letter(database_url: str, question_id: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE questions SET status = 'failed', error_kind = %s, error_message = 'lost by hand', "
            "completed_at = now() WHERE question_id = %s",
            (DEAD_LETTER_ERROR_KIND, question_id),
        )


def test_a_replayed_question_is_pending_for_the_ledger_when_its_message_is_published(stack):
    """The replay's message can reach llm_consumer within milliseconds of the broker's ack: the
    ledger must already see the question reopened, or it skips the call as over (seen in CI)."""
    with ledger_for_new_question(stack.database_url, Status.PENDING, runs=1) as (ledger, message):
        fail_by_dead_letter(stack.database_url, message.question_id)
        store = QuestionStore(stack.database_url)
        seen_during_publish: list[SkipReason | None] = []
        try:
            reopened = store.reopen_and(
                message, lambda: seen_during_publish.append(skip_reason(message, ledger.state(message)))
            )
            assert reopened and seen_during_publish == [None]
            assert store.row(message.question_id) == QuestionRow(Status.PENDING, 1, None)
        finally:
            store.close()


def test_a_replay_whose_publish_fails_leaves_the_question_failed_as_it_was(stack):
    with ledger_for_new_question(stack.database_url, Status.PENDING, runs=1) as (ledger, message):
        fail_by_dead_letter(stack.database_url, message.question_id)
        store = QuestionStore(stack.database_url)

        def publish_refused() -> None:
            raise DeliveryError("broker away")

        try:
            with pytest.raises(DeliveryError):
                store.reopen_and(message, publish_refused)
            assert store.row(message.question_id) == QuestionRow(Status.FAILED, 1, DEAD_LETTER_ERROR_KIND)
            assert skip_reason(message, ledger.state(message)) is SkipReason.TERMINAL
            assert store.reopen_and(message, lambda: None)  # and it can still be replayed
        finally:
            store.close()


def test_a_connection_that_died_while_idle_is_replaced_at_once(stack):
    """After a PostgreSQL restart the kept connection fails on its next use: the ledger opens a new
    one for that very call, so no answered step goes unrecorded (it used to stop for 15 s)."""
    with ledger_for_new_question(stack.database_url, Status.PENDING, runs=1) as (ledger, message):
        assert ledger.state(message) is not None
        assert ledger._conn is not None
        backend = ledger._conn.info.backend_pid
        with psycopg.connect(stack.database_url, autocommit=True) as admin:
            (terminated,) = admin.execute("SELECT pg_terminate_backend(%s)", (backend,)).fetchone()
        assert terminated
        ledger.mark_answered(message, topics.LLM_RESPONSES_SUCCESS)
        assert ledger._conn is not None and ledger._conn.info.backend_pid != backend
        with psycopg.connect(stack.database_url) as conn:
            (rows,) = conn.execute(
                "SELECT count(*) FROM llm_calls WHERE question_id = %s", (message.question_id,)
            ).fetchone()
        assert rows == 1
