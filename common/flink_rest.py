"""The Flink job's name and the REST questions about it (is it active? in which state?), shared by its
watchdog, `make status`, storage_service's /health and the backup scorer."""

from __future__ import annotations

import json
import urllib.request

SCORE_JOB_NAME = "Flink Score Validator Job"
ACTIVE_STATES = frozenset({"RUNNING", "CREATED", "RESTARTING", "INITIALIZING", "RECONCILING"})
MISSING = "MISSING"


def list_jobs(rest_url: str, timeout_s: float = 5.0) -> list[dict]:
    with urllib.request.urlopen(f"{rest_url.rstrip('/')}/jobs/overview", timeout=timeout_s) as resp:
        return json.load(resp)["jobs"]


def score_job_active(jobs: list[dict]) -> bool:
    return any(j["name"] == SCORE_JOB_NAME and j["state"] in ACTIVE_STATES for j in jobs)


def score_job(jobs: list[dict]) -> dict | None:
    """The job that tells the truth about the score job: an active one, else the latest to start."""
    mine = [j for j in jobs if j.get("name") == SCORE_JOB_NAME]
    active = [j for j in mine if j.get("state") in ACTIVE_STATES]
    candidates = active or mine
    return max(candidates, key=lambda j: j.get("start-time", 0)) if candidates else None


def score_job_state(jobs: list[dict]) -> str:
    """RUNNING, RESTARTING, ..., FAILED or CANCELED of the latest score job; MISSING if none."""
    job = score_job(jobs)
    return str(job["state"]) if job else MISSING


def all_tasks_running(job: dict) -> bool:
    """Every task of a /jobs/overview entry deployed and running (the job processes records)."""
    tasks = job.get("tasks", {})
    total = tasks.get("total", 0)
    return job.get("state") == "RUNNING" and total > 0 and tasks.get("running", 0) == total
