"""`make up` as a newcomer meets it: the real stack with whatever LLM answers at OLLAMA_URL (the
embedded SmolLM2 model on a machine without Ollama), the seed's example question, `make down`.

Run on its own (after the other suites stopped their stack): it needs the standard ports.
"""

from __future__ import annotations

import os
import socket
import subprocess

import psycopg
import requests

from common.flink_rest import SCORE_JOB_NAME, list_jobs
from tests.conftest import ROOT, wait_until

SEED_EXAMPLE = {"question_text": "¿Cuál es la capital de Chile?", "original_answer": "La capital de Chile es Santiago"}
SERVICE_PORTS = (9092, 9093, 5432, 6379, 8081, 8000, 5001, 8080, 11434)
# Prometheus, the dashboard, the workers' metrics ports, Flink's reporters (JobManager, TaskManager).
OBSERVABILITY_PORTS = (9090, 8090, 9101, 9102, 9103, 9104, 9105, 9107, 9249, 9250)
PORTS = SERVICE_PORTS + OBSERVABILITY_PORTS


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def make(target: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"OLLAMA_URL", "LLM_MODEL"}}
    env["YAHOO_LLM_STACK"] = "smoke-stack"
    subprocess.run(["make", "-s", target], cwd=ROOT, env=env, check=True, timeout=900)


def running_score_jobs() -> int:
    return sum(j["name"] == SCORE_JOB_NAME and j["state"] == "RUNNING" for j in list_jobs("http://localhost:8081"))


def test_make_up_answers_the_seed_example_then_make_down_leaves_nothing():
    try:
        make("up")  # inside: a failed or timed-out start is still brought down
        make("up")  # a second `make up` is harmless: nothing restarts, the job is not submitted twice
        assert running_score_jobs() == 1
        assert requests.get("http://localhost:9090/-/ready", timeout=10).ok  # Prometheus
        assert requests.get("http://localhost:8090/health", timeout=10).ok  # the dashboard
        resp = requests.post("http://localhost:5001/query", json=SEED_EXAMPLE, timeout=30)
        assert resp.status_code in (200, 202), resp.text
        qid = resp.json()["question_id"]
        final = wait_until(
            lambda: (
                (r := requests.get(f"http://localhost:5001/status/{qid}", timeout=10)).ok
                and r.json()["status"] != "pending"
                and r.json()
            ),
            420,
            interval_s=2,
            what="the seed example to reach a terminal status",
        )
        assert final["status"] in {"validated", "low_quality", "failed"}
        with psycopg.connect("postgresql://yahoo:yahoo@localhost:5432/yahoo_llm") as conn:
            (status,) = conn.execute("SELECT status FROM questions WHERE question_id = %s", (qid,)).fetchone()
        assert status == final["status"]
        if final["status"] != "failed":
            assert final["score_history"], "a scored answer has a history"
    finally:
        make("down")
    assert not [p for p in PORTS if listening(p)]
