"""PostgreSQL access. Every write is keyed by (question_id, run[, attempt]), and a run's first terminal
outcome wins (storage_service.rules): a message delivered twice leaves the same rows behind."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from psycopg import Connection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from common.messages import DeadLetter, PipelineMessage
from common.topics import Status
from storage_service.access import Batch
from storage_service.rules import (
    OutcomeResult,
    QuestionState,
    dead_letter_reason,
    dead_letter_target,
    decide_outcome,
    may_start_new_run,
)


def required(row: DictRow | None) -> DictRow:
    """A row the query always returns (an aggregate, or one the same transaction holds locked)."""
    if row is None:
        raise RuntimeError("expected a row, the query returned none")
    return row


@dataclass(frozen=True)
class Claim:
    """The outcome of asking for a question: a new run to publish, or the row that already exists."""

    question_id: str
    status: str
    run: int
    is_new_run: bool
    previous_status: Status | None = None  # for a new run of a question that existed


TOP_ACCESSED = 10  # the most accessed questions GET /metrics lists


class Repository:
    def __init__(self, database_url: str, pool_size: int = 8) -> None:
        # Short waits: with PostgreSQL down a client gets its 503 in seconds, not after 30.
        self.pool = ConnectionPool(
            database_url,
            connection_class=Connection[DictRow],
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=3,
            kwargs={"row_factory": dict_row, "connect_timeout": 3},
        )

    def open(self, wait_s: float = 30.0) -> None:
        self.pool.open(wait=True, timeout=wait_s)

    def close(self) -> None:
        self.pool.close()

    def ping(self) -> None:
        with self.pool.connection(timeout=3) as conn:
            conn.execute("SELECT 1")

    @contextmanager
    def claim(self, message: PipelineMessage, pending_timeout_s: float) -> Iterator[Claim]:
        """Insert the question as pending, or start a new run of a failed, low-quality or stale
        pending one (storage_service.rules.may_start_new_run).

        The transaction commits only when the caller's block succeeds (the Kafka publish), so a
        question is never left pending without a message on its way. A concurrent duplicate waits
        on the row lock and then sees the pending row: one pipeline run per question.
        """
        params = message.model_dump(include={"question_id", "question_text", "original_answer"})
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute(
                """
                INSERT INTO questions (question_id, question_text, original_answer, status)
                VALUES (%(question_id)s, %(question_text)s, %(original_answer)s, 'pending')
                ON CONFLICT (question_id) DO NOTHING
                RETURNING question_id, status, runs
                """,
                params,
            ).fetchone()
            if row is not None:
                yield Claim(row["question_id"], row["status"], row["runs"], is_new_run=True)
                return
            current, now = self._locked_state(conn, message.question_id)
            if current is None:  # rows are never deleted; the conflict above saw this one
                raise RuntimeError(f"question {message.question_id} vanished while being claimed")
            if not may_start_new_run(current, now, pending_timeout_s):
                yield Claim(message.question_id, current.status.value, current.run, is_new_run=False)
                return
            row = required(
                conn.execute(
                    """
                    UPDATE questions SET
                        status = 'pending', runs = runs + 1, original_answer = %(original_answer)s,
                        attempts = 0, final_answer = NULL, final_score = NULL, error_kind = NULL,
                        error_message = NULL, completed_at = NULL, updated_at = now()
                    WHERE question_id = %(question_id)s
                    RETURNING question_id, status, runs
                    """,
                    params,
                ).fetchone()
            )
            yield Claim(row["question_id"], row["status"], row["runs"], is_new_run=True, previous_status=current.status)

    @staticmethod
    def _locked_state(conn: Connection[DictRow], question_id: str) -> tuple[QuestionState | None, Any]:
        """The question's state, locked until the transaction ends, and the database's clock."""
        row = conn.execute(
            "SELECT status, runs, updated_at, now() AS now FROM questions WHERE question_id = %s FOR UPDATE",
            (question_id,),
        ).fetchone()
        if row is None:
            return None, required(conn.execute("SELECT now() AS now").fetchone())["now"]
        return QuestionState(Status(row["status"]), row["runs"], row["updated_at"]), row["now"]

    @staticmethod
    def _count_duplicate(conn: Connection[DictRow], question_id: str) -> None:
        conn.execute(
            "UPDATE questions SET duplicate_outcomes = duplicate_outcomes + 1 WHERE question_id = %s", (question_id,)
        )

    def record_outcome(self, message: PipelineMessage, status: Status) -> OutcomeResult:
        """Store a terminal outcome if it is the first of the question's current run.

        A later outcome of the same run only increments `duplicate_outcomes`; an outcome of another
        run is ignored. The score history comes from the winning message alone.
        """
        with self.pool.connection() as conn, conn.transaction():
            current, _now = self._locked_state(conn, message.question_id)
            result = decide_outcome(current, message.run, creates_missing=True)
            if result is OutcomeResult.DUPLICATE:
                self._count_duplicate(conn, message.question_id)
            elif result is OutcomeResult.APPLIED:
                self._apply_outcome(conn, message, status, row_exists=current is not None)
            return result

    def _apply_outcome(
        self, conn: Connection[DictRow], message: PipelineMessage, status: Status, *, row_exists: bool
    ) -> None:
        score = message.score
        params = {
            **message.model_dump(
                include={"question_id", "question_text", "original_answer", "run", "attempt", "model"}
            ),
            "status": status.value,
            "final_answer": message.llm_answer if status is not Status.FAILED else None,
            "final_score": score.f1 if score else None,
            "best_score": max((r.f1 for r in message.score_history), default=None),
            "error_kind": message.error.kind if message.error else None,
            "error_message": message.error.message if message.error else None,
            "attempts": len(message.score_history) if status is not Status.FAILED else message.attempt,
        }
        if row_exists:
            conn.execute(
                """
                UPDATE questions SET
                    status = %(status)s, final_answer = %(final_answer)s, final_score = %(final_score)s,
                    best_score = GREATEST(%(best_score)s, best_score), attempts = %(attempts)s, model = %(model)s,
                    error_kind = %(error_kind)s, error_message = %(error_message)s, updated_at = now(),
                    completed_at = now()
                WHERE question_id = %(question_id)s
                """,
                params,
            )
        else:  # the row is gone (a restored database): the message carries the whole question
            conn.execute(
                """
                INSERT INTO questions (question_id, question_text, original_answer, status, final_answer,
                    final_score, best_score, attempts, model, error_kind, error_message, runs, completed_at)
                VALUES (%(question_id)s, %(question_text)s, %(original_answer)s, %(status)s, %(final_answer)s,
                    %(final_score)s, %(best_score)s, %(attempts)s, %(model)s, %(error_kind)s, %(error_message)s,
                    %(run)s, now())
                """,
                params,
            )
        for record in message.score_history:
            conn.execute(
                """
                INSERT INTO attempts (question_id, run, attempt, llm_answer, precision, recall, f1, scored_at)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (question_id, run, attempt) DO NOTHING
                """,
                (
                    message.question_id,
                    message.run,
                    record.attempt,
                    record.llm_answer,
                    record.precision,
                    record.recall,
                    record.f1,
                    record.scored_at,
                ),
            )
        if status is Status.FAILED and message.error:
            self._insert_failure(
                conn,
                message.question_id,
                message.run,
                attempt=message.attempt,
                retry_count=message.retry_count,
                kind=message.error.kind,
                status_code=message.error.status,
                text=message.error.message,
                failed_at=message.updated_at,
            )

    @staticmethod
    def _insert_failure(
        conn: Connection[DictRow],
        question_id: str,
        run: int,
        *,
        attempt: int | None,
        retry_count: int | None,
        kind: str,
        status_code: int | None,
        text: str,
        failed_at: Any,
    ) -> None:
        conn.execute(
            """
            INSERT INTO failures (question_id, run, attempt, retry_count, kind, status_code, message, failed_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (question_id, run) DO NOTHING
            """,
            (question_id, run, attempt, retry_count, kind, status_code, text, failed_at),
        )

    def record_dead_letter(self, letter: DeadLetter, original: PipelineMessage | None) -> OutcomeResult:
        """End the question a dead letter belongs to: `failed`, error_kind 'dead_letter', with the
        reason (also in `failures`), if that run is still pending; counted as a duplicate if the run
        had already ended; ignored for an older run or a question we do not hold."""
        question_id, run = dead_letter_target(letter, original)
        if question_id is None:
            return OutcomeResult.UNKNOWN_QUESTION
        reason = dead_letter_reason(letter)
        with self.pool.connection() as conn, conn.transaction():
            current, _now = self._locked_state(conn, question_id)
            result = decide_outcome(current, run, creates_missing=False)
            if result is OutcomeResult.DUPLICATE:
                self._count_duplicate(conn, question_id)
            elif result is OutcomeResult.APPLIED and current is not None:
                conn.execute(
                    """
                    UPDATE questions SET status = 'failed', error_kind = 'dead_letter', error_message = %s,
                        final_answer = NULL, final_score = NULL, updated_at = now(), completed_at = now()
                    WHERE question_id = %s
                    """,
                    (reason, question_id),
                )
                self._insert_failure(
                    conn,
                    question_id,
                    current.run,
                    attempt=original.attempt if original else None,
                    retry_count=original.retry_count if original else None,
                    kind="dead_letter",
                    status_code=None,
                    text=reason,
                    failed_at=letter.failed_at,
                )
            return result

    def record_accesses(self, batch: Batch) -> None:
        """Add a batch of accesses (storage_service.access) in one statement; a question without a row
        (a cache hit after the database was restored) is skipped. One process flushes one batch at a
        time; replicas' batches may lock rows in another order, and a deadlock PostgreSQL breaks fails
        one batch, which the next flush retries."""
        ids = sorted(batch)
        with self.pool.connection() as conn:
            conn.execute(
                """
                UPDATE questions AS q SET
                    access_count = q.access_count + a.n,
                    last_accessed_at = GREATEST(q.last_accessed_at, a.at)
                FROM unnest(%s::text[], %s::bigint[], %s::timestamptz[]) AS a(question_id, n, at)
                WHERE q.question_id = a.question_id
                """,
                (ids, [batch[i].count for i in ids], [batch[i].last_at for i in ids]),
            )

    def schema_is_current(self) -> bool:
        """Whether the newest column of postgres/schema.sql exists (questions.last_accessed_at)."""
        with self.pool.connection() as conn:
            return (
                conn.execute(
                    "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                    "AND table_name = 'questions' AND column_name = 'last_accessed_at'"
                ).fetchone()
                is not None
            )

    def apply_schema(self, schema_sql: str, lock_timeout_s: float = 5.0) -> None:
        """Apply the idempotent postgres/schema.sql (the container's init script only runs on an empty
        volume, so a column added later reaches an existing database this way). Its ALTERs lock the
        tables: give up after `lock_timeout_s` rather than queue every query behind them."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
            conn.execute(schema_sql.encode())

    def question(self, question_id: str) -> dict[str, Any] | None:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT * FROM questions WHERE question_id = %s", (question_id,)).fetchone()
            if row is None:
                return None
            row["score_history"] = conn.execute(
                "SELECT run, attempt, f1, precision, recall, llm_answer, scored_at FROM attempts "
                "WHERE question_id = %s ORDER BY run, attempt",
                (question_id,),
            ).fetchall()
            row["failures"] = conn.execute(
                "SELECT run, attempt, retry_count, kind, status_code, message, failed_at FROM failures "
                "WHERE question_id = %s ORDER BY run",
                (question_id,),
            ).fetchall()
            return row

    def metrics(self) -> dict[str, Any]:
        with self.pool.connection() as conn:
            by_status = {
                r["status"]: r["n"]
                for r in conn.execute("SELECT status, count(*) AS n FROM questions GROUP BY status").fetchall()
            }
            totals = required(
                conn.execute(
                    "SELECT coalesce(sum(duplicate_outcomes), 0) AS duplicate_outcomes, "
                    "count(*) FILTER (WHERE status = 'failed' AND error_kind = 'dead_letter') AS dead_lettered "
                    "FROM questions"
                ).fetchone()
            )
            averages = required(
                conn.execute(
                    "SELECT avg(final_score) FILTER (WHERE status = 'validated') AS average_score, "
                    "avg(best_score) AS average_best_score FROM questions"
                ).fetchone()
            )
            accesses = required(
                conn.execute(
                    "SELECT coalesce(sum(access_count), 0) AS accesses_total, "
                    "count(*) FILTER (WHERE access_count > 0) AS questions_accessed FROM questions"
                ).fetchone()
            )
            most_accessed = conn.execute(
                "SELECT question_id, access_count, last_accessed_at FROM questions WHERE access_count > 0 "
                "ORDER BY access_count DESC, question_id LIMIT %s",
                (TOP_ACCESSED,),
            ).fetchall()
            distribution = {
                str(r["attempts"]): r["n"]
                for r in conn.execute(
                    "SELECT attempts, count(*) AS n FROM questions WHERE status IN ('validated', 'low_quality') "
                    "GROUP BY attempts ORDER BY attempts"
                ).fetchall()
            }
        return {
            "total_responses": sum(n for s, n in by_status.items() if s != Status.PENDING),
            "questions_by_status": by_status,
            "average_score": averages["average_score"],
            "average_best_score": averages["average_best_score"],
            "attempts_distribution": distribution,
            # terminal outcomes (and dead letters) that arrived after their run had ended: never applied
            "duplicate_outcomes": totals["duplicate_outcomes"],
            "questions_failed_by_dead_letter": totals["dead_lettered"],
            # 2xx answers of POST /query, summed over the questions (written in batches: see /metrics'
            # accesses_unwritten), and the most asked questions
            "accesses_total": int(accesses["accesses_total"]),
            "questions_accessed": accesses["questions_accessed"],
            "top_accessed": [dict(row) for row in most_accessed],
        }
