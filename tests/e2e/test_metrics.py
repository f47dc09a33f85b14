"""Prometheus metrics of every Python process, after real questions went through the stack.

Each process is scraped before and after the questions (a good one, one regenerated from a bad
first answer, one retried after an overload, and a cached repeat); the series named in
common/metrics.py must be there with their labels, and the counters must have moved.
"""

from __future__ import annotations

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from common import topics
from scripts.platform.layout import Layout
from scripts.platform.observability import worker_metrics_ports
from tests.conftest import terminal, unique, wait_until
from tests.fake_ollama import Answer, Fail

REFERENCE = "The capital of Chile is Santiago."
GOOD = "Santiago is the capital of Chile."
BAD = "Bananas are a yellow fruit rich in potassium that grows in tropical countries."

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    resp = requests.get(url, timeout=15)
    assert resp.status_code == 200, url
    assert resp.headers["Content-Type"].startswith("text/plain"), url
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (n, series), value in samples.items() if n == name and wanted <= series)


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(series)[label] for (n, series) in samples if n == name and label in dict(series)}


@pytest.fixture
def endpoints(stack) -> dict[str, list[str]]:
    """Where each process serves its metrics: the HTTP services on their own port, the workers on
    the port plan's METRICS_PORT (scripts/platform/observability.py)."""
    layout = Layout("test-stack", stack.env)
    ports = worker_metrics_ports(layout.llm_consumers)
    worker = {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}
    return {
        "storage": [f"{stack.storage_url}/metrics/prometheus"],
        "score-validator": [f"{stack.scorer_url}/metrics/prometheus"],
        "kafka-ui": [f"{layout.kafka_ui_url}/metrics/prometheus"],
        "storage-consumer": [worker["storage-consumer"]],
        "llm-consumer": [url for name, url in worker.items() if name.startswith("llm-consumer-")],
        "retry-overload-consumer": [worker["retry-overload-consumer"]],
        "watchdog": [worker["flink-job-watchdog"]],
    }


def scrape_all(endpoints: dict[str, list[str]]) -> dict[str, Samples]:
    """Each process group's samples, the copies of one group (the two LLM consumers) summed."""
    merged: dict[str, Samples] = {}
    for name, urls in endpoints.items():
        samples: Samples = {}
        for url in urls:
            for key, value in scrape(url).items():
                samples[key] = samples.get(key, 0.0) + value
        merged[name] = samples
    return merged


def test_every_process_exposes_its_metrics_and_they_move_with_real_questions(
    stack, fake_llm, ask, status_of, endpoints
):
    before = scrape_all(endpoints)
    good, regenerated, retried = (unique("What is the capital of Chile?") for _ in range(3))
    fake_llm.script(good, Answer(GOOD))
    fake_llm.script(regenerated, Answer(BAD), Answer(GOOD))
    fake_llm.script(retried, Fail(503), Answer(GOOD))
    ids = [ask(q, REFERENCE).json()["question_id"] for q in (good, regenerated, retried)]
    finals = [terminal(status_of, qid, timeout_s=180) for qid in ids]
    assert [f["status"] for f in finals] == ["validated"] * 3 and finals[1]["attempts"] == 2
    assert ask(good, REFERENCE).json()["source"] == "cache"
    assert requests.post(f"{stack.storage_url}/query", json={}, timeout=10).status_code == 400

    def moved_at_least(group: str, name: str, at_least: float, **labels: str) -> None:
        """The series moved by `at_least` since `before` (polled: a worker records just after the
        database shows the outcome)."""

        def delta() -> float:
            now = scrape_all({group: endpoints[group]})[group]
            return total(now, name, **labels) - total(before[group], name, **labels)

        wait_until(lambda: delta() >= at_least, 15, 0.5, f"{group} {name}{labels} to move by {at_least}")

    # storage_service, the front door
    moved_at_least("storage", "yahoo_questions_accepted_total", 3, outcome="published")
    moved_at_least("storage", "yahoo_questions_accepted_total", 1, outcome="cached")
    moved_at_least("storage", "yahoo_questions_accepted_total", 1, outcome="rejected")
    moved_at_least("storage", "yahoo_questions_published_total", 3)
    moved_at_least("storage", "yahoo_cache_requests_total", 1, result="hit")
    moved_at_least("storage", "yahoo_cache_requests_total", 3, result="miss")
    route = {"service": "storage-service", "route": "/status/<question_id>", "method": "GET", "status": "200"}
    moved_at_least("storage", "yahoo_http_requests_total", 3, **route)
    moved_at_least("storage", "yahoo_http_request_duration_seconds_count", 4, route="/query")
    storage = scrape_all({"storage": endpoints["storage"]})["storage"]
    assert total(storage, "yahoo_flink_job_up") == 1
    assert not any(
        "/status/" in r and "<" not in r for r in label_values(storage, "yahoo_http_requests_total", "route")
    )

    # storage-consumer: the outcomes, scores, attempts and time taken
    moved_at_least("storage-consumer", "yahoo_outcomes_total", 3, status="validated", result="applied")
    moved_at_least("storage-consumer", "yahoo_f1_score_count", 3, attempt="1")
    moved_at_least("storage-consumer", "yahoo_f1_score_count", 1, attempt="2")
    moved_at_least("storage-consumer", "yahoo_regeneration_f1_count", 1, stage="first")
    moved_at_least("storage-consumer", "yahoo_regeneration_f1_count", 1, stage="final")
    moved_at_least("storage-consumer", "yahoo_attempts_per_question_sum", 4, status="validated")  # 1 + 2 + 1
    moved_at_least("storage-consumer", "yahoo_end_to_end_seconds_count", 3, status="validated")
    messages = {"service": "storage-consumer", "topic": topics.VALIDATED_RESPONSES}
    moved_at_least("storage-consumer", "yahoo_consumer_messages_total", 3, **messages)

    # the LLM consumers (both processes summed): calls by kind, latency, tokens
    moved_at_least("llm-consumer", "yahoo_llm_calls_total", 4, kind="success")
    moved_at_least("llm-consumer", "yahoo_llm_calls_total", 1, kind="overload")
    moved_at_least("llm-consumer", "yahoo_llm_call_duration_seconds_count", 4, kind="success")
    moved_at_least("llm-consumer", "yahoo_llm_tokens_total", 1, direction="prompt")
    moved_at_least("llm-consumer", "yahoo_llm_tokens_total", 1, direction="completion")
    moved_at_least("llm-consumer", "yahoo_consumer_messages_total", 5, service="llm-consumer")

    # the overload retry consumer, the scorer (called by the Flink job), the watchdog
    moved_at_least("retry-overload-consumer", "yahoo_retries_total", 1, kind="overload", retry_count="1")
    moved_at_least("score-validator", "yahoo_score_requests_total", 4, outcome="ok")  # one per attempt
    moved_at_least("score-validator", "yahoo_score_duration_seconds_count", 4)
    now = time.time()
    for group, service in [
        ("storage-consumer", "storage-consumer"),
        ("llm-consumer", "llm-consumer"),
        ("retry-overload-consumer", "retry-overload-consumer"),
        ("watchdog", "flink-job-watchdog"),
    ]:
        polled = scrape(endpoints[group][0])
        last = total(polled, "yahoo_worker_last_poll_timestamp_seconds", service=service)
        assert now - 60 < last <= now + 5, f"{service} last polled at {last}"

    # kafka-ui: lag per group, topic and partition, and the members of each group, read when scraped
    kafka = scrape_all({"kafka-ui": endpoints["kafka-ui"]})["kafka-ui"]
    lag_groups = label_values(kafka, "yahoo_kafka_consumer_lag", "group")
    assert {topics.GROUP_LLM_CONSUMER, topics.GROUP_STORAGE} <= lag_groups
    assert label_values(kafka, "yahoo_kafka_consumer_lag", "partition") <= {"0", "1", "2"}
    llm_consumers = len(endpoints["llm-consumer"])  # LLM_CONSUMERS of the test stack, 2 by default
    assert total(kafka, "yahoo_kafka_consumer_group_members", group=topics.GROUP_LLM_CONSUMER) == llm_consumers
    assert total(kafka, "yahoo_kafka_consumer_group_members", group=topics.GROUP_STORAGE) == 1
