"""The native Prometheus (:9090, started by `make up`) scrapes every target of the stack's generated
list once questions flowed: `up == 1` for the services, each worker's METRICS_PORT, Flink's
JobManager and TaskManager reporters and itself; Flink's own series are there and have moved."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests

from score_validator.config import ScoreValidatorSettings
from scripts.platform.layout import Layout
from scripts.platform.observability import scrape_targets
from tests.conftest import ROOT, terminal, unique
from tests.fake_ollama import Answer

SCRAPE_DEADLINE_S = 90  # a few 5 s scrape rounds, after the slowest worker's start


def query(prometheus_url: str, promql: str) -> list[dict]:
    resp = requests.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=10)
    body = resp.json()
    assert resp.status_code == 200 and body["status"] == "success", body
    return body["data"]["result"]


def scrape_errors(prometheus_url: str) -> dict[str, str]:
    """instance -> the last scrape error Prometheus saw, for the failure message."""
    targets = requests.get(f"{prometheus_url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    return {t["labels"]["instance"]: f"{t['health']}: {t['lastError']}" for t in targets if t["health"] != "up"}


@pytest.fixture(scope="module")
def flowed(stack, fake_llm) -> list[str]:
    """A few questions through the whole pipeline (LLM, Flink scoring, storage), once for the module."""

    def status_of(question_id: str) -> dict | None:
        resp = requests.get(f"{stack.storage_url}/status/{question_id}", timeout=10)
        return resp.json() if resp.status_code == 200 else None

    ids = []
    for city in ("Lima", "Quito", "Bogotá"):
        question = unique(f"Which city is {city}?")
        fake_llm.script(question, Answer(f"{city} is a capital city."))
        body = {"question_text": question, "original_answer": f"{city} is a capital city."}
        ids.append(requests.post(f"{stack.storage_url}/query", json=body, timeout=30).json()["question_id"])
    for question_id in ids:
        terminal(status_of, question_id)
    return ids


def test_every_generated_target_is_up(stack, flowed):
    layout = Layout("test-stack", stack.env)
    backup = ScoreValidatorSettings.from_env(stack.env).score_validator_backup_consumer
    expected = {(t.job, f"localhost:{t.port}"): t.service for t in scrape_targets(layout, backup_scorer=backup)}
    assert {job for job, _ in expected} >= {"flink", "llm-consumer", "prometheus", "storage"}

    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    while True:
        up = {(r["metric"]["job"], r["metric"]["instance"]): r for r in query(stack.prometheus_url, "up")}
        down = {target: up[target]["value"][1] if target in up else "absent" for target in expected}
        down = {target: value for target, value in down.items() if value != "1"}
        if not down or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not down, f"targets not up: {down}; Prometheus says {scrape_errors(stack.prometheus_url)}"
    for target, service in expected.items():
        assert up[target]["metric"]["service"] == service, target

    # What an operator sees: `make status` reports the same from Prometheus.
    status = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "stack.py"), "--name", "test-stack", "status"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert f"{len(expected)}/{len(expected)} targets up" in status, status


def test_flink_reports_through_its_prometheus_reporter(stack, flowed):
    """Both JVMs' series are scraped, and the job's task counters moved with the questions."""
    by_service = query(stack.prometheus_url, 'count by (service) ({job="flink", __name__=~"flink_.+"})')
    assert {r["metric"]["service"] for r in by_service} == {"flink-jobmanager", "flink-taskmanager"}
    assert query(stack.prometheus_url, "max(flink_jobmanager_job_uptime) > 0"), "no running job's uptime"

    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    while not (records := query(stack.prometheus_url, "sum(flink_taskmanager_job_task_numRecordsIn) > 0")):
        assert time.monotonic() < deadline, "Flink's tasks read no record though questions were scored"
        time.sleep(1)
    assert float(records[0]["value"][1]) >= len(flowed)


# For each pipeline job, a series only that process exports, as PromQL whose value must be > 0 once
# questions flowed (every process also exports the label-less yahoo_* counters at 0, so mere
# presence of yahoo_* names would prove nothing).
MOVED_BY_JOB = {
    "storage": ("yahoo_questions_accepted_total", 'outcome="published"'),
    "score-validator": ("yahoo_score_requests_total", 'outcome="ok"'),
    "kafka-ui": ("yahoo_kafka_consumer_group_members", 'group="llm-consumer"'),
    "storage-consumer": ("yahoo_outcomes_total", 'result="applied"'),
    "llm-consumer": ("yahoo_llm_calls_total", 'kind="success"'),
    "retry-consumer": ("yahoo_worker_last_poll_timestamp_seconds", 'service=~"retry-.*"'),
    "watchdog": ("yahoo_worker_last_poll_timestamp_seconds", 'service="flink-job-watchdog"'),
    "dashboard": ("yahoo_http_requests_total", 'service="dashboard"'),
}


def test_each_pipeline_job_serves_its_own_series_and_they_moved(stack, flowed):
    """Beyond `up`: each pipeline target serves the series only it counts, scraped by Prometheus."""
    requests.get(f"http://localhost:{Layout('test-stack', stack.env).dashboard_port}/health", timeout=10)

    def moved() -> dict[str, float]:
        values = {}
        for job, (metric, selector) in MOVED_BY_JOB.items():
            result = query(stack.prometheus_url, f'sum({metric}{{{selector}, job="{job}"}})')
            values[job] = float(result[0]["value"][1]) if result else 0.0
        return values

    deadline = time.monotonic() + SCRAPE_DEADLINE_S
    while (values := moved()) and min(values.values()) <= 0 and time.monotonic() < deadline:
        time.sleep(2)
    assert all(value > 0 for value in values.values()), values
