"""The Flink job's name and the REST question 'is it active?', shared by its submitter and the backup scorer."""

from __future__ import annotations

import json
import urllib.request

SCORE_JOB_NAME = "Flink Score Validator Job"
ACTIVE_STATES = frozenset({"RUNNING", "CREATED", "RESTARTING", "INITIALIZING", "RECONCILING"})


def list_jobs(rest_url: str, timeout_s: float = 5.0) -> list[dict]:
    with urllib.request.urlopen(f"{rest_url.rstrip('/')}/jobs/overview", timeout=timeout_s) as resp:
        return json.load(resp)["jobs"]


def score_job_active(jobs: list[dict]) -> bool:
    return any(j["name"] == SCORE_JOB_NAME and j["state"] in ACTIVE_STATES for j in jobs)
