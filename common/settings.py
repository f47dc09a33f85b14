"""Configuration from environment variables (README, "Configuration"); same names natively and in Docker.

`StackSettings` is the one place that knows the stack's endpoints (ports, URLs, where it listens):
the services' settings inherit it, and scripts/stack.py and the tests' fixtures read it too, so an
overridden port moves everywhere it is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.policy import FailureKind, RetryPolicy

# The repository (natively) or the image's working folder (/app): common/ lives right under it.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class EnvSettings(BaseSettings):
    """Read from the process environment; `from_env` reads another environment (a child's)."""

    # An empty variable means "not set" (as `${VAR:-}` in compose passes it): the default applies.
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True, env_ignore_empty=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        """These settings as a process given `env` (and nothing else) would read them."""
        given = {key.upper(): value for key, value in env.items() if value != ""}
        # Every field passed explicitly, so nothing of this process's own environment leaks in.
        values: dict[str, Any] = {
            name: given.get(name.upper(), field.get_default(call_default_factory=True))
            for name, field in cls.model_fields.items()
        }
        return cls(**values)


def _local_url(port: int | None) -> str:
    return f"http://localhost:{port}"


class StackSettings(EnvSettings):
    """Where each part of the stack listens and how the others reach it (README, "Configuration")."""

    kafka_bootstrap_servers: str = "localhost:9092"
    database_url: str = "postgresql://yahoo:yahoo@localhost:5432/yahoo_llm"
    redis_url: str = "redis://localhost:6379/0"
    # Natively: Redis's password when REDIS_URL carries none (default: one generated per stack).
    redis_password: str | None = None
    # Where every port of the native stack and every HTTP service listens: nothing exposed unless asked.
    bind_host: str = "127.0.0.1"
    ollama_url: str = "http://localhost:11434"
    storage_port: int = 5001
    # The URLs below default to localhost on the port above them (validate_default: derived even when unset).
    storage_url: str = Field(default="", validate_default=True)
    score_validator_port: int = 8000
    score_validator_url: str = Field(default="", validate_default=True)
    flink_rest_port: int = 8081
    flink_rest_url: str = Field(default="", validate_default=True)
    kafka_ui_port: int = 8080
    # Observability (README, "Observability"): Prometheus natively and in compose, and the dashboard.
    prometheus_port: int = 9090
    prometheus_url: str = Field(default="", validate_default=True)
    dashboard_port: int = 8090
    # Partitions of every topic: the most consumers of a group (LLM consumers, Flink subtasks) that
    # share the work. Raised on an existing stack, topics grow at the next start (never shrink).
    kafka_partitions: int = Field(default=3, ge=1, le=64)
    # Flink TaskManagers natively (each a JVM with 2 slots; compose: `--scale flink-taskmanager=N`).
    # The job's parallelism is FLINK_PARALLELISM (flink_job/config.py); README, "Scaling out".
    taskmanagers: int = Field(default=1, ge=1, le=8)
    # LLM consumer processes natively (llm-consumer-0..N-1, supervisord group `llm-consumer`; compose:
    # `--scale llm-consumer=N`). At most KAFKA_PARTITIONS of them get work; README, "Scaling out".
    llm_consumers: int = Field(default=2, ge=1, le=16)
    # The CPU priority (nice) of the pipeline's workers natively: the LLM and retry consumers, Flink's
    # TaskManagers (and their Python workers), the scorer, the embedded LLM and the tools. The API and
    # its consumer, Kafka, PostgreSQL, Redis and Flink's JobManager keep 0, so a POST /query is answered first when the
    # pipeline's work fills every core (scripts/platform/processes.py: cpu_nice). 0: all equal.
    worker_nice: int = Field(default=5, ge=0, le=19)
    # The native Redis's cache size and eviction policy (compose: redis/redis.conf).
    redis_maxmemory: str = "128mb"
    redis_maxmemory_policy: str = "allkeys-lru"
    # Native state (venv, data, logs); in an image, .state under its working folder.
    yahoo_llm_state_dir: str = str(PROJECT_ROOT / ".state")

    @field_validator("storage_url", "score_validator_url", "flink_rest_url", "prometheus_url")
    @classmethod
    def _default_to_local_port(cls, url: str, info: ValidationInfo) -> str:
        port_field = str(info.field_name).removesuffix("_url") + "_port"  # storage_url -> storage_port
        return url or _local_url(info.data.get(port_field))

    @property
    def kafka_port(self) -> int:
        """The port of the first bootstrap server (natively: the broker's; its controller's is + 1)."""
        return int(self.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)[1])

    @property
    def state_dir(self) -> Path:
        return Path(self.yahoo_llm_state_dir)


class ServiceSettings(StackSettings):
    """What every service needs. Each service subclasses this with its own fields."""

    log_level: str = "INFO"
    # Workers touch this file at every poll: a container healthcheck reads its age (liveness).
    liveness_file: str | None = None
    # A worker without an HTTP server of its own serves Prometheus text at BIND_HOST:METRICS_PORT/metrics.
    metrics_port: int | None = None


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
