"""What the dashboard reads from PostgreSQL: the latest outcomes, and when a question was asked."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from common.topics import Status

CONNECT_TIMEOUT_S = 5


class OutcomeStore:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        # One short connection per request: the page asks a few times a minute.
        return psycopg.connect(
            self.database_url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True, row_factory=dict_row
        )

    def latest(self, limit: int) -> list[dict[str, Any]]:
        """The questions that ended most recently (validated, low_quality, failed), newest first."""
        with self._connect() as conn:
            return conn.execute(
                """
                SELECT question_id, question_text, final_answer AS answer,
                       COALESCE(final_score, best_score) AS score, status, attempts, runs,
                       error_kind, completed_at, updated_at
                FROM questions WHERE status <> %s
                ORDER BY updated_at DESC LIMIT %s
                """,
                (Status.PENDING.value, limit),
            ).fetchall()

    def asked_at(self, question_id: str) -> tuple[datetime, str] | None:
        """When the question was first asked, and its status; None for a question never asked."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT created_at, status FROM questions WHERE question_id = %s", (question_id,)
            ).fetchone()
        return (row["created_at"], row["status"]) if row else None

    def ping(self) -> None:
        with self._connect() as conn:
            conn.execute("SELECT 1")
