"""Redis cache of validated answers. Redis down means a cache miss, never an outage."""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

log = logging.getLogger(__name__)


class AnswerCache:
    def __init__(self, url: str, ttl_s: int) -> None:
        self.ttl_s = ttl_s
        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)

    @staticmethod
    def _key(question_id: str) -> str:
        return f"answer:{question_id}"

    def get(self, question_id: str) -> dict[str, Any] | None:
        try:
            raw = self._redis.get(self._key(question_id))
        except redis.RedisError as exc:
            log.warning("cache unavailable; treating as a miss", extra={"question_id": question_id, "error": str(exc)})
            return None
        return json.loads(raw) if isinstance(raw, bytes | str) and raw else None

    def put(self, question_id: str, result: dict[str, Any]) -> None:
        try:
            self._redis.set(self._key(question_id), json.dumps(result, default=str), ex=self.ttl_s)
        except redis.RedisError as exc:
            log.warning("cache write failed", extra={"question_id": question_id, "error": str(exc)})

    def delete(self, question_id: str) -> None:
        """Forget a question's answer (a new run of it started)."""
        try:
            self._redis.delete(self._key(question_id))
        except redis.RedisError as exc:
            log.warning("cache delete failed", extra={"question_id": question_id, "error": str(exc)})

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False


def validated_result(row: dict[str, Any]) -> dict[str, Any]:
    """What a client gets for a validated question, from the cache or the database alike."""
    return {
        "question_id": row["question_id"],
        "question_text": row["question_text"],
        "answer": row["final_answer"],
        "score": row["final_score"],
        "attempts": row["attempts"],
        "model": row["model"],
        "validated_at": row["completed_at"].isoformat()
        if hasattr(row["completed_at"], "isoformat")
        else row["completed_at"],
    }
