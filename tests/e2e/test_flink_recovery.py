"""The Flink job survives its JobManager: killed with SIGKILL, supervisord starts an empty one, and the
watchdog (flink_job/watchdog.py) resubmits the job from its latest retained checkpoint."""

from __future__ import annotations

import time

import requests

from common.flink_rest import all_tasks_running, list_jobs, score_job
from tests.conftest import supervisorctl, terminal, unique, wait_until
from tests.fake_ollama import Answer

REFERENCE = "The capital of Chile is Santiago."
GOOD = "Santiago is the capital of Chile."


def running_job(flink_url: str) -> dict | None:
    """The score job when every task of it runs; None otherwise (also while Flink does not answer)."""
    try:
        job = score_job(list_jobs(flink_url, timeout_s=2))
    except (OSError, ValueError, KeyError):
        return None
    return job if job and all_tasks_running(job) else None


def test_job_is_back_within_60s_of_a_jobmanager_kill(stack, fake_llm, ask, status_of):
    before = wait_until(lambda: running_job(stack.flink_url), 120, interval_s=1, what="the job running")
    # At least one completed checkpoint to restore from (every 5 s).
    wait_until(
        lambda: requests.get(f"{stack.flink_url}/jobs/{before['jid']}/checkpoints", timeout=3).json()["counts"][
            "completed"
        ],
        60,
        interval_s=1,
        what="a completed checkpoint",
    )

    supervisorctl("signal", "KILL", "flink-jobmanager")
    killed_at = time.monotonic()
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(GOOD))
    qid = ask(question, REFERENCE).json()["question_id"]  # asked while the job is gone

    after = wait_until(
        lambda: (job := running_job(stack.flink_url)) and job["jid"] != before["jid"] and job,
        60,
        interval_s=1,
        what="the job running again after the JobManager kill",
    )
    back_after_s = time.monotonic() - killed_at
    assert back_after_s <= 60
    restored = requests.get(f"{stack.flink_url}/jobs/{after['jid']}/checkpoints", timeout=5).json()["latest"][
        "restored"
    ]
    assert restored and restored["external_path"], "resubmitted from the committed offsets, not from a checkpoint"
    assert before["jid"] in restored["external_path"]  # the killed job's own checkpoint

    final = terminal(status_of, qid, timeout_s=180)
    assert final["status"] == "validated"
