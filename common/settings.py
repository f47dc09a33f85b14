"""Configuration from environment variables (DESIGN.md, "Configuration"); same names natively and in Docker."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from common.policy import FailureKind, RetryPolicy


class ServiceSettings(BaseSettings):
    """What every service needs. Each service subclasses this with its own fields."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = "localhost:9092"
    log_level: str = "INFO"
    # storage_service keeps the questions here; llm_consumer reads them (and its call ledger) to skip
    # messages of finished questions before calling the LLM.
    database_url: str = "postgresql://yahoo:yahoo@localhost:5432/yahoo_llm"
    # Workers touch this file at every poll: a container healthcheck reads its age (liveness).
    liveness_file: str | None = None


class PipelineSettings(ServiceSettings):
    """The rules shared by the services that route messages."""

    quality_threshold: float = 0.75
    max_attempts: int = 3
    retry_overload_base_delay_s: float = 5.0
    retry_overload_max_retries: int = 5
    retry_quota_delay_s: float = 60.0
    retry_quota_max_retries: int = 5

    @property
    def overload_policy(self) -> RetryPolicy:
        return RetryPolicy(
            FailureKind.OVERLOAD, self.retry_overload_base_delay_s, self.retry_overload_max_retries, exponential=True
        )

    @property
    def quota_policy(self) -> RetryPolicy:
        return RetryPolicy(FailureKind.QUOTA, self.retry_quota_delay_s, self.retry_quota_max_retries, exponential=False)
