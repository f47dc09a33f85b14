from __future__ import annotations

from common.settings import PROJECT_ROOT, PipelineSettings


class DashboardSettings(PipelineSettings):
    """The dashboard's own knobs; QUALITY_THRESHOLD and MAX_ATTEMPTS come from the pipeline's rules
    (PipelineSettings), so the threshold line and the attempt buckets are the ones the job applies."""

    # How often the page asks for fresh data (seconds); told to the page by GET /api/config.
    dashboard_refresh_s: float = 5.0
    # A worker whose poll loop did not turn for this long is shown as stalled. Above LLM_TIMEOUT_S
    # (120 s) plus a margin: an LLM consumer does not turn its loop during a call, nor the Flink job
    # watchdog while it submits the job.
    dashboard_stall_after_s: float = 180.0
    # Answer time allowed to Prometheus per query; a slower answer counts as unreachable.
    prometheus_timeout_s: float = 5.0
    # A question trace reads each topic's partition of the question from (created_at - margin), for at
    # most `trace_timeout_s`, scanning at most `trace_max_records` records in all (other questions'
    # records of the same partitions included): a busy topic makes a trace partial, never slow.
    trace_margin_s: float = 60.0
    trace_timeout_s: float = 10.0
    trace_max_records: int = 50_000
    # Chart.js, installed by `npm ci --prefix dashboard` (scripts/install.sh; the image's node stage).
    dashboard_assets_dir: str = str(PROJECT_ROOT / "dashboard" / "node_modules")
