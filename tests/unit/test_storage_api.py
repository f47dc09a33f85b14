"""storage_service's HTTP decisions of issue 8, in-process on fakes (tests/unit/web_fakes.py): the
reference answer is required, a value PostgreSQL refuses is a 400 (not an outage), and /health
reports the Flink job."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from common.flink_rest import ScoreJobStatus
from storage_service.app import create_app, overall_health
from storage_service.config import StorageSettings
from tests.unit.web_fakes import UNREACHABLE_KAFKA, FakeCache, FakeProducer, FakeRepository, storage_app

QUESTION = "What is the capital of Chile?"


def test_original_answer_is_required_and_not_blank():
    client = storage_app()[0].test_client()
    for body in ({"question_text": QUESTION}, {"question_text": QUESTION, "original_answer": "  "}):
        resp = client.post("/query", json=body)
        assert resp.status_code == 400
        assert resp.get_json()["error"] == "invalid_field"
        assert "'original_answer' is required" in resp.get_json()["message"]
    assert client.post("/query", json={"question_text": QUESTION, "original_answer": 7}).status_code == 400
    assert client.post("/query", json={"question_text": QUESTION, "original_answer": "Santiago"}).status_code == 202


class RefusingRepository(FakeRepository):
    """PostgreSQL refusing a value (what a NUL character did before the API checked for it)."""

    @contextmanager
    def claim(self, message: Any, *_args: Any, **_kwargs: Any) -> Iterator[Any]:
        raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        yield


def test_a_value_the_database_refuses_is_a_400_and_not_a_database_error():
    settings = StorageSettings(kafka_bootstrap_servers=UNREACHABLE_KAFKA)
    app = create_app(settings, RefusingRepository(), FakeCache(), FakeProducer())  # type: ignore[arg-type]
    client = app.test_client()
    resp = client.post("/query", json={"question_text": QUESTION, "original_answer": "Santiago"})
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_field"
    assert client.get("/metrics").get_json()["db_errors"] == 0


class StoppedJob:
    def status(self) -> ScoreJobStatus:
        return ScoreJobStatus(False, "missing")


def test_health_names_a_missing_flink_job_and_metrics_count_it():
    settings = StorageSettings(kafka_bootstrap_servers=UNREACHABLE_KAFKA, flink_rest_url="http://127.0.0.1:9")
    app = create_app(settings, FakeRepository(), FakeCache(), FakeProducer(), StoppedJob())  # type: ignore[arg-type]
    client = app.test_client()
    before = client.get("/metrics").get_json()
    assert before["flink_job_missing_checks"] == 0 and before["flink_job_state"] == "not checked yet"
    checks = client.get("/health").get_json()["checks"]
    assert checks["flink_job"].startswith("not running (missing)")
    after = client.get("/metrics").get_json()
    assert after["flink_job_missing_checks"] == 1 and after["flink_job_state"] == "missing"


def test_overall_health():
    ok = {"postgres": "ok", "kafka": "ok", "redis": "ok", "flink_job": "ok"}
    assert overall_health(ok) == ("healthy", 200)
    assert overall_health({**ok, "flink_job": "not running (missing)"}) == ("degraded", 200)
    assert overall_health({**ok, "redis": "down"}) == ("degraded", 200)
    assert overall_health({**ok, "kafka": "down", "flink_job": "not running"}) == ("unhealthy", 503)
    assert overall_health({**ok, "postgres": "down"}) == ("unhealthy", 503)
