from __future__ import annotations

from common.settings import PipelineSettings


class JobSettings(PipelineSettings):
    """Read once, on the client that submits the job; the values travel with the job graph."""

    score_validator_url: str = "http://localhost:8000"
    flink_parallelism: int = 1
    flink_checkpoint_interval_ms: int = 5000
    scorer_concurrency: int = 8
    scorer_request_timeout_s: float = 60.0
    scorer_max_wait_s: float = 120.0
    scorer_max_text_chars: int = 20_000
