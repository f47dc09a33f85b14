"""PostgreSQL access. Every write is an upsert keyed by (question_id, run[, attempt]), so a message
delivered twice leaves the same rows behind."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from psycopg import Connection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from common.messages import PipelineMessage

TERMINAL_STATUS_BY_TOPIC = {
    "validated-responses": "validated",
    "low-quality-responses": "low_quality",
    "llm-responses-error": "failed",
}


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
    def claim(self, message: PipelineMessage) -> Iterator[Claim]:
        """Insert the question as pending, or start a new run of a failed/low-quality one.

        The transaction commits only when the caller's block succeeds (the Kafka publish), so a
        question is never left pending without a message on its way. A concurrent duplicate waits
        on the row lock and then sees the pending row: one pipeline run per question.
        """
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute(
                """
                INSERT INTO questions (question_id, question_text, original_answer, status)
                VALUES (%(question_id)s, %(question_text)s, %(original_answer)s, 'pending')
                ON CONFLICT (question_id) DO UPDATE SET
                    status = 'pending', runs = questions.runs + 1, original_answer = EXCLUDED.original_answer,
                    attempts = 0, final_answer = NULL, final_score = NULL, error_kind = NULL,
                    error_message = NULL, completed_at = NULL, updated_at = now()
                WHERE questions.status IN ('failed', 'low_quality')
                RETURNING question_id, status, runs
                """,
                message.model_dump(include={"question_id", "question_text", "original_answer"}),
            ).fetchone()
            if row is not None:
                yield Claim(row["question_id"], row["status"], row["runs"], is_new_run=True)
                return
            existing = required(
                conn.execute(
                    "SELECT question_id, status, runs FROM questions WHERE question_id = %s", (message.question_id,)
                ).fetchone()
            )
            yield Claim(existing["question_id"], existing["status"], existing["runs"], is_new_run=False)

    def record_outcome(self, message: PipelineMessage, status: str) -> bool:
        """Store a terminal outcome; returns False when it belongs to an older run (ignored)."""
        score = message.score
        params = {
            **message.model_dump(
                include={"question_id", "question_text", "original_answer", "run", "attempt", "model"}
            ),
            "status": status,
            "final_answer": message.llm_answer if status != "failed" else None,
            "final_score": score.f1 if score else None,
            "best_score": max((r.f1 for r in message.score_history), default=None),
            "error_kind": message.error.kind if message.error else None,
            "error_message": message.error.message if message.error else None,
            "attempts": len(message.score_history) if status != "failed" else message.attempt,
        }
        with self.pool.connection() as conn, conn.transaction():
            current = conn.execute(
                """
                INSERT INTO questions (question_id, question_text, original_answer, status, final_answer,
                    final_score, best_score, attempts, model, error_kind, error_message, runs, completed_at)
                VALUES (%(question_id)s, %(question_text)s, %(original_answer)s, %(status)s, %(final_answer)s,
                    %(final_score)s, %(best_score)s, %(attempts)s, %(model)s, %(error_kind)s, %(error_message)s,
                    %(run)s, now())
                ON CONFLICT (question_id) DO UPDATE SET
                    status = EXCLUDED.status, final_answer = EXCLUDED.final_answer,
                    final_score = EXCLUDED.final_score,
                    best_score = GREATEST(EXCLUDED.best_score, questions.best_score),
                    attempts = EXCLUDED.attempts, model = EXCLUDED.model, error_kind = EXCLUDED.error_kind,
                    error_message = EXCLUDED.error_message, updated_at = now(),
                    completed_at = COALESCE(questions.completed_at, now())
                WHERE questions.runs = EXCLUDED.runs
                RETURNING runs
                """,
                params,
            ).fetchone()
            if current is None:
                return False
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
            if status == "failed" and message.error:
                conn.execute(
                    """
                    INSERT INTO failures (question_id, run, attempt, retry_count, kind, status_code, message, failed_at)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                    ON CONFLICT (question_id, run) DO NOTHING
                    """,
                    (
                        message.question_id,
                        message.run,
                        message.attempt,
                        message.retry_count,
                        message.error.kind,
                        message.error.status,
                        message.error.message,
                        message.updated_at,
                    ),
                )
        return True

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
            averages = required(
                conn.execute(
                    "SELECT avg(final_score) FILTER (WHERE status = 'validated') AS average_score, "
                    "avg(best_score) AS average_best_score FROM questions"
                ).fetchone()
            )
            distribution = {
                str(r["attempts"]): r["n"]
                for r in conn.execute(
                    "SELECT attempts, count(*) AS n FROM questions WHERE status IN ('validated', 'low_quality') "
                    "GROUP BY attempts ORDER BY attempts"
                ).fetchall()
            }
        return {
            "total_responses": sum(n for s, n in by_status.items() if s != "pending"),
            "questions_by_status": by_status,
            "average_score": averages["average_score"],
            "average_best_score": averages["average_best_score"],
            "attempts_distribution": distribution,
        }
