from __future__ import annotations

from common.settings import PipelineSettings


class StorageSettings(PipelineSettings):
    # PipelineSettings for MAX_ATTEMPTS: the F1-per-attempt series start at 0 for every attempt.
    cache_ttl_s: int = 7 * 24 * 3600
    # Input limits (README, "API"): larger bodies get HTTP 413.
    max_body_bytes: int = 64 * 1024
    max_question_chars: int = 4_000
    max_answer_chars: int = 20_000
    kafka_produce_timeout_s: float = 10.0
    db_pool_size: int = 8
    # A question pending longer than this may be asked again: POST /query starts a new run, and
    # outcomes of the old one are ignored. Longer than the slowest legitimate chain is best (3
    # attempts, each with its overload and quota retries); shorter only costs LLM calls.
    pending_timeout_s: float = 900.0
    # /health asks Flink's REST API whether the score job runs; the answer is reused for a few seconds.
    flink_check_timeout_s: float = 1.0
    flink_check_cache_s: float = 5.0
    # Question accesses (POST /query answers) are written to PostgreSQL in batches this often
    # (storage_service.access); GET /status and GET /metrics write them first anyway.
    access_flush_s: float = 1.0
