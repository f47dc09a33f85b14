"""The Flink job's name and the REST questions about it (is it active? in which state?), shared by its
watchdog, `make status`, storage_service's /health and the backup scorer."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

SCORE_JOB_NAME = "Flink Score Validator Job"
ACTIVE_STATES = frozenset({"RUNNING", "CREATED", "RESTARTING", "INITIALIZING", "RECONCILING"})
MISSING = "MISSING"


def list_jobs(rest_url: str, timeout_s: float = 5.0) -> list[dict]:
    with urllib.request.urlopen(f"{rest_url.rstrip('/')}/jobs/overview", timeout=timeout_s) as resp:
        return json.load(resp)["jobs"]


def job_state(rest_url: str, job_id: str, timeout_s: float = 5.0) -> str | None:
    """One job's state by its id; None when the JobManager does not answer."""
    try:
        with urllib.request.urlopen(f"{rest_url.rstrip('/')}/jobs/{job_id}", timeout=timeout_s) as resp:
            return json.load(resp).get("state")
    except (OSError, ValueError):
        return None


def _get(rest_url: str, path: str, timeout_s: float) -> dict:
    with urllib.request.urlopen(f"{rest_url.rstrip('/')}{path}", timeout=timeout_s) as resp:
        return json.load(resp)


@dataclass(frozen=True)
class JobSpread:
    """Where a job runs: each vertex's parallelism and the TaskManagers hosting its subtasks."""

    parallelism: dict[str, int]
    taskmanagers: dict[str, frozenset[str]]

    def spans(self, parallelism: int, taskmanagers: int) -> bool:
        """Every vertex at `parallelism`, and at least one spread over `taskmanagers` TaskManagers."""
        at_parallelism = bool(self.parallelism) and all(p == parallelism for p in self.parallelism.values())
        widest = max((len(tms) for tms in self.taskmanagers.values()), default=0)
        return at_parallelism and widest >= taskmanagers


def job_spread(rest_url: str, job_id: str, timeout_s: float = 5.0) -> JobSpread:
    """GET /jobs/<id> and each vertex's /taskmanagers (Flink's REST API)."""
    vertices = _get(rest_url, f"/jobs/{job_id}", timeout_s)["vertices"]
    parallelism, hosts = {}, {}
    for vertex in vertices:
        parallelism[vertex["name"]] = int(vertex["parallelism"])
        listed = _get(rest_url, f"/jobs/{job_id}/vertices/{vertex['id']}/taskmanagers", timeout_s)
        hosts[vertex["name"]] = frozenset(str(tm["taskmanager-id"]) for tm in listed.get("taskmanagers", []))
    return JobSpread(parallelism, hosts)


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


@dataclass(frozen=True)
class ScoreJobStatus:
    running: bool
    state: str  # the job's state as `read` names it, or "unreachable: <why>"


def running_and_state(jobs: list[dict]) -> tuple[bool, str]:
    return score_job_active(jobs), score_job_state(jobs)


class ScoreJobWatch:
    """Is the score job running? Asked of Flink's REST API with a short timeout, and the answer reused
    for `ttl_s` seconds so that a caller that asks on every message or every /health stays cheap.
    An unreachable Flink (refused, timed out, not Flink's answer) is "not running". Thread-safe.

    `read` turns a /jobs/overview answer into (running, state); callers may name states their own way.
    """

    def __init__(
        self,
        rest_url: str,
        *,
        timeout_s: float,
        ttl_s: float,
        read: Callable[[list[dict]], tuple[bool, str]] = running_and_state,
        fetch: Callable[[], list[dict]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch or (lambda: list_jobs(rest_url, timeout_s=timeout_s))
        self._read, self._ttl_s, self._clock = read, ttl_s, clock
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._last = ScoreJobStatus(False, "not checked yet")

    def status(self) -> ScoreJobStatus:
        with self._lock:
            if self._clock() - self._checked_at >= self._ttl_s:
                self._last = self._ask()
                self._checked_at = self._clock()
            return self._last

    def active(self) -> bool:
        return self.status().running

    def _ask(self) -> ScoreJobStatus:
        try:
            return ScoreJobStatus(*self._read(self._fetch()))
        except (OSError, ValueError, KeyError) as exc:  # refused, timed out, or not Flink's answer
            return ScoreJobStatus(False, f"unreachable: {exc}")
