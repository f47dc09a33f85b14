"""Scaled out as README "Scaling out" says: `TASKMANAGERS=2 FLINK_PARALLELISM=2 make up` runs two
TaskManagers and the Flink job at parallelism 2, its subtasks on both; every question is still scored
and ends exactly once. The scripted LLM answers (tests/fake_ollama.py), so only Flink's scale matters.

Run after tests/smoke/test_make_up.py, on its own stack (it needs the standard ports).
"""

from __future__ import annotations

import os
import socket
import subprocess

import requests

from common.flink_rest import job_spread, list_jobs, score_job
from scripts.platform.layout import Layout
from scripts.platform.observability import flink_reporter_ports
from tests.conftest import FAKE_LLM_PORT, ROOT, TEST_ENV, stack_endpoints, wait_until
from tests.e2e.test_llm_concurrency import each_validated_once

SCALE_ENV = {
    **TEST_ENV,
    "YAHOO_LLM_STACK": "scale-stack",
    "OLLAMA_URL": f"http://127.0.0.1:{FAKE_LLM_PORT}",
    "TASKMANAGERS": "2",
    "FLINK_PARALLELISM": "2",
}
QUESTIONS = 40


def make(target: str, env: dict) -> None:
    subprocess.run(["make", "-s", target], cwd=ROOT, env=env, check=True, timeout=900)


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def spread_of_score_job(flink_url: str):
    job = score_job(list_jobs(flink_url))
    if not job or job["state"] != "RUNNING":
        return None
    return job_spread(flink_url, job["jid"])


def test_two_taskmanagers_at_parallelism_2_score_every_question_once(fake_llm):
    env = {**os.environ, **SCALE_ENV}
    layout = Layout("scale-stack", env)
    stack = stack_endpoints(layout, env)
    try:
        make("up", env)  # inside: a failed or timed-out start is still brought down
        overview = requests.get(f"{stack.flink_url}/overview", timeout=10).json()
        assert overview["taskmanagers"] == 2
        spread = wait_until(
            lambda: (s := spread_of_score_job(stack.flink_url)) is not None and s.spans(2, 2) and s,
            180,
            interval_s=2,
            what="the score job at parallelism 2 on both TaskManagers",
        )
        assert set(spread.parallelism.values()) == {2}
        # Both TaskManagers' reporters are up: 9250 and 9251.
        assert all(listening(port) for port in flink_reporter_ports(2).values())

        each_validated_once(stack, fake_llm, "scaled", QUESTIONS)
    finally:
        make("down", env)
    assert not [p for p in flink_reporter_ports(2).values() if listening(p)]
