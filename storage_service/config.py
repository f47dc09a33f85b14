from __future__ import annotations

from common.settings import ServiceSettings


class StorageSettings(ServiceSettings):
    storage_port: int = 5001
    database_url: str = "postgresql://yahoo:yahoo@localhost:5432/yahoo_llm"
    redis_url: str = "redis://localhost:6379/0"
    cache_ttl_s: int = 7 * 24 * 3600
    # Input limits (README, "API"): larger bodies get HTTP 413.
    max_body_bytes: int = 64 * 1024
    max_question_chars: int = 4_000
    max_answer_chars: int = 20_000
    kafka_produce_timeout_s: float = 10.0
    db_pool_size: int = 8
