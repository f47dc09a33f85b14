"""The Flink job's deployment: the watchdog program submits it (and resubmits it whenever it goes
missing); `up` waits for it and `status` reports it."""

from __future__ import annotations

from scripts.platform.health import wait_for
from scripts.platform.layout import Layout
from scripts.platform.processes import WATCHDOG, start_programs


def deploy_flink_job(layout: Layout) -> None:
    """Starts the watchdog, which submits the job (and resubmits it whenever it goes missing), and
    waits until every task of the job runs."""
    from common.flink_rest import all_tasks_running, list_jobs, score_job

    start_programs(layout, [WATCHDOG])

    def job_runs() -> bool:
        job = score_job(list_jobs(layout.flink_rest_url, timeout_s=3))
        return job is not None and all_tasks_running(job)

    wait_for("Flink job (submitted by flink-job-watchdog)", job_runs, 300, interval_s=1, layout=layout)


def flink_job_status(layout: Layout) -> str:
    """The Flink job's state from the REST API, with a hint when it is not running."""
    from common.flink_rest import MISSING, all_tasks_running, list_jobs, score_job

    hint = f"; {WATCHDOG} resubmits it (log: {layout.path('logs', WATCHDOG + '.log')})"
    try:
        job = score_job(list_jobs(layout.flink_rest_url, timeout_s=3))
    except (OSError, ValueError, KeyError) as exc:
        return f"UNKNOWN (Flink REST API unreachable: {exc}){hint}"
    if job is None:
        return MISSING + hint
    tasks = job.get("tasks", {})
    state = f"{job['state']} (tasks running {tasks.get('running', 0)}/{tasks.get('total', 0)}, job {job['jid']})"
    return state if all_tasks_running(job) else state + hint
