from __future__ import annotations

from common.settings import PipelineSettings, ServiceSettings


class JobSettings(PipelineSettings):
    """Read once, on the client that submits the job; the values travel with the job graph."""

    flink_parallelism: int = 1
    flink_checkpoint_interval_ms: int = 5000
    # Pairs in flight to the scorer per parallel instance: the micro-batching scorer coalesces them
    # into one model call (score_validator/batching.py), so more in flight is more batched.
    scorer_concurrency: int = 32
    # PyFlink hands the Python operator's results back when a bundle ends: at most this often (ms).
    # Flink's default (1000) put ~1 s of waiting on every answer; 100 keeps the overhead small.
    flink_python_bundle_time_ms: int = 100
    scorer_request_timeout_s: float = 60.0
    # A record that fails this many times while the scorer answers others (or is refused with a 4xx)
    # goes to dead-letter; failures while nothing answers are an outage, waited out (scoring.py).
    scorer_record_max_failures: int = 3
    scorer_max_backoff_s: float = 10.0
    scorer_max_text_chars: int = 20_000


class WatchdogSettings(ServiceSettings):
    """The watchdog that keeps the job deployed (flink_job/watchdog.py)."""

    flink_bin: str | None = None  # default: the `flink` script of the installed PyFlink
    # Where the cluster writes checkpoints (execution.checkpointing.dir): the watchdog restores the
    # job from the latest one there. None: always from the committed offsets.
    flink_checkpoints_dir: str | None = None
    watchdog_interval_s: float = 2.0
    # Job folders kept under flink_checkpoints_dir (each submission starts a new one).
    watchdog_keep_checkpoint_jobs: int = 3
