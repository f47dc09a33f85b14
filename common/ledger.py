"""The LLM-call ledger: which (question_id, run, attempt, retry_count) were already answered.

At-least-once delivery makes duplicates routine (a crash between produce and commit, a Flink replay
since its last checkpoint). A duplicate of an attempt must not reach the LLM again, or it starts a
second, independent chain for the same question. So before a call llm_consumer asks here whether the
step was already answered, and whether the question is already over for its run (`questions`, kept
by storage_service). A step is marked answered only after its result was acknowledged by the broker:
a crash before that makes one more LLM call (bounded), never a lost question.

Availability first: when PostgreSQL cannot be reached the consumer calls the LLM anyway (storage's
first-terminal-outcome-wins keeps the results right) and says so in its log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import psycopg

from common.messages import PipelineMessage
from common.topics import TERMINAL_STATUSES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuestionState:
    """What the database knows about a message's question and this exact step of it."""

    status: str | None  # questions.status; None while storage has not committed the row yet
    runs: int | None  # questions.runs: the question's current run
    answered: bool  # this (question_id, run, attempt, retry_count) was answered and delivered


TERMINAL_STATUS_VALUES = frozenset(status.value for status in TERMINAL_STATUSES)


class SkipReason(StrEnum):
    ALREADY_ANSWERED = "already_answered"  # a redelivered duplicate of a step already answered
    OLDER_RUN = "older_run"  # the question was asked again since; this message's run is over
    TERMINAL = "terminal"  # the question already reached its terminal status in this run


def skip_reason(message: PipelineMessage, state: QuestionState | None) -> SkipReason | None:
    """Why the LLM must not be called for `message`, or None to call it.

    `state` None means the ledger is unreachable: call (fail open). A run newer than the row's is a
    question asked again whose row is not committed yet: call. A missing row likewise.
    """
    if state is None:
        return None
    if state.answered:
        return SkipReason.ALREADY_ANSWERED
    if state.runs is not None and message.run < state.runs:
        return SkipReason.OLDER_RUN
    if state.runs == message.run and state.status in TERMINAL_STATUS_VALUES:
        return SkipReason.TERMINAL
    return None


LOOKUP_SQL = """
SELECT q.status, q.runs,
       EXISTS (SELECT 1 FROM llm_calls c
               WHERE c.question_id = %(question_id)s AND c.run = %(run)s
                 AND c.attempt = %(attempt)s AND c.retry_count = %(retry_count)s) AS answered
FROM (SELECT 1) AS one LEFT JOIN questions q ON q.question_id = %(question_id)s
"""

MARK_SQL = """
INSERT INTO llm_calls (question_id, run, attempt, retry_count, outcome_topic, consumer)
VALUES (%(question_id)s, %(run)s, %(attempt)s, %(retry_count)s, %(outcome_topic)s, %(consumer)s)
ON CONFLICT (question_id, run, attempt, retry_count) DO NOTHING
"""


def step_of(message: PipelineMessage) -> dict:
    """The dedupe key of one LLM call (also the key of the ledger's rows)."""
    return {
        "question_id": message.question_id,
        "run": message.run,
        "attempt": message.attempt,
        "retry_count": message.retry_count,
    }


class CallLedger:
    """One PostgreSQL connection, reopened on demand; after a failure it waits `retry_after_s`
    before trying again, so an outage costs one connect timeout, not one per message."""

    def __init__(
        self,
        database_url: str,
        consumer: str,
        *,
        timeout_s: float = 3.0,
        retry_after_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database_url, self.consumer = database_url, consumer
        self.timeout_s, self.retry_after_s, self.clock = timeout_s, retry_after_s, clock
        self._conn: psycopg.Connection | None = None
        self._down_until = float("-inf")

    def state(self, message: PipelineMessage) -> QuestionState | None:
        """The question's state and whether this step was answered; None when the ledger is unreachable."""
        row = self._run(LOOKUP_SQL, step_of(message), message.question_id, fetch=True)
        if row is None:
            return None
        status, runs, answered = row
        return QuestionState(status=status, runs=runs, answered=bool(answered))

    def mark_answered(self, message: PipelineMessage, outcome_topic: str) -> None:
        """Record that this step's result was delivered to `outcome_topic` (idempotent)."""
        params = {**step_of(message), "outcome_topic": outcome_topic, "consumer": self.consumer}
        self._run(MARK_SQL, params, message.question_id, fetch=False)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run(self, sql: str, params: dict, question_id: str, *, fetch: bool) -> tuple | None:
        if self.clock() < self._down_until:
            return None
        kept = self._conn is not None and not self._conn.closed
        try:
            return self._execute(sql, params, fetch=fetch)
        except psycopg.Error as exc:
            self.close()
            if not kept:  # a new connection failed: the ledger is away
                self._went_down(exc, question_id)
                return None
        # The kept connection died while idle (PostgreSQL restarted, the backend was terminated):
        # one new connection before calling the ledger down. Without this, every step answered in
        # the next `retry_after_s` went unrecorded after a database restart.
        try:
            return self._execute(sql, params, fetch=fetch)
        except psycopg.Error as exc:
            self.close()
            self._went_down(exc, question_id)
            return None

    def _went_down(self, exc: psycopg.Error, question_id: str) -> None:
        self._down_until = self.clock() + self.retry_after_s
        log.warning(
            "call ledger unavailable; proceeding without dedupe",
            extra={"question_id": question_id, "retry_in_s": self.retry_after_s, "error": str(exc)[:300]},
        )

    def _execute(self, sql: str, params: dict, *, fetch: bool) -> tuple | None:
        cursor = self._connection().execute(sql, params)
        return cursor.fetchone() if fetch else ()

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            # statement_timeout: a stuck database must not hold the LLM consumer for long either.
            self._conn = psycopg.connect(
                self.database_url,
                autocommit=True,
                connect_timeout=max(1, round(self.timeout_s)),
                options=f"-c statement_timeout={int(self.timeout_s * 1000)}",
            )
        return self._conn
