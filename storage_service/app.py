"""HTTP API: POST /query, GET /status/<question_id>, GET /metrics, GET /health."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

import psycopg
from confluent_kafka.admin import AdminClient
from flask import Flask, Response, jsonify, request
from psycopg_pool import PoolTimeout

from common import topics
from common.flink_rest import ScoreJobWatch
from common.kafka import ConfirmedProducer, DeliveryError
from common.messages import PipelineMessage, question_id_for
from common.metrics import (
    CACHE_REQUESTS,
    QUESTIONS_ACCEPTED,
    QUESTIONS_PUBLISHED,
    flink_job_up_collector,
    start_storage_api_series,
)
from common.topics import Status
from common.web import ApiError, configure_json_api, json_body, required_text
from storage_service.access import AccessRecorder
from storage_service.cache import AnswerCache, validated_result
from storage_service.config import StorageSettings
from storage_service.repository import Repository
from storage_service.rules import flink_job_state

log = logging.getLogger(__name__)
# The database is unreachable or failing. Not DataError: a value PostgreSQL refuses is the
# request's fault (a 400), not an outage, and must not count as a database error.
DB_ERRORS = (psycopg.Error, PoolTimeout)


class Counters:
    """Request counters of this process (gunicorn runs one worker, so they are the service's)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def reference_answer(data: dict[str, Any], max_chars: int) -> str:
    """`original_answer` is required and not blank: every answer is scored against it, and an
    empty reference would only spend LLM calls on a score that means nothing (docs/DESIGN.md,
    "Additions to the contract")."""
    value = data.get("original_answer")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ApiError(
            400, "invalid_field", "'original_answer' is required and must not be blank: answers are scored against it"
        )
    return required_text(data, "original_answer", max_chars)


def overall_health(checks: dict[str, str]) -> tuple[str, int]:
    """Unhealthy (503) without PostgreSQL or Kafka: the API cannot take a question. Degraded (200)
    without Redis (cache misses only) or without a running Flink job (answers wait unscored)."""
    if checks["postgres"] != "ok" or checks["kafka"] != "ok":
        return "unhealthy", 503
    if checks["redis"] != "ok" or checks["flink_job"] != "ok":
        return "degraded", 200
    return "healthy", 200


def create_app(
    settings: StorageSettings,
    repo: Repository,
    cache: AnswerCache,
    producer: ConfirmedProducer,
    flink: ScoreJobWatch | None = None,
    accesses: AccessRecorder | None = None,
) -> Flask:
    app = Flask("storage_service")
    # Every 2xx POST /query is an access of its question (storage_service.access): counted here,
    # written to PostgreSQL in batches.
    recorder = accesses or AccessRecorder(repo.record_accesses, settings.access_flush_s).start()
    app.extensions["access_recorder"] = recorder
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    flink = flink or ScoreJobWatch(
        settings.flink_rest_url,
        timeout_s=settings.flink_check_timeout_s,
        ttl_s=settings.flink_check_cache_s,
        read=flink_job_state,
    )
    configure_json_api(app, openapi="storage_service", metrics=[flink_job_up_collector(lambda: flink.status().running)])
    start_storage_api_series()
    counters = Counters()
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    last_flink_state = {"state": "not checked yet"}

    def refused_value(exc: psycopg.DataError) -> ApiError:
        log.warning("the database refused a value of the request", extra={"error": str(exc)})
        return ApiError(400, "invalid_field", f"a field holds a value the database cannot store: {exc}")

    def database_unavailable(exc: Exception) -> ApiError:
        counters.add("db_errors")
        log.error("database unavailable", extra={"error": str(exc)})
        return ApiError(503, "database_unavailable", "the database is not reachable; try again later")

    @app.post("/query")
    def query():
        try:
            response, outcome = answer_query()
        except ApiError as exc:  # bad input, or Kafka/PostgreSQL away: an outage is not the client's fault
            QUESTIONS_ACCEPTED.labels("rejected" if exc.status < 500 else "unavailable").inc()
            raise
        QUESTIONS_ACCEPTED.labels(outcome).inc()
        return response

    def answer_query() -> tuple[tuple[Response, int], str]:
        """The answer to POST /query, and its outcome for yahoo_questions_accepted_total."""
        data = json_body(request, settings.max_body_bytes)
        question_text = required_text(data, "question_text", settings.max_question_chars)
        original_answer = reference_answer(data, settings.max_answer_chars)
        question_id = question_id_for(question_text)
        counters.add("queries")

        cached = cache.get(question_id)
        CACHE_REQUESTS.labels("miss" if cached is None else "hit").inc()
        if cached is not None:
            counters.add("cache_hits")
            log.info("answered from cache", extra={"question_id": question_id})
            recorder.record(question_id)
            return (jsonify(status="found", source="cache", question_id=question_id, result=cached), 200), "cached"
        counters.add("cache_misses")

        message = PipelineMessage.new(question_text, original_answer)
        try:
            with repo.claim(message, settings.pending_timeout_s) as claim:
                if claim.is_new_run:
                    try:
                        producer.send_and_wait(topics.QUESTIONS_PENDING, message.evolve(run=claim.run))
                    except DeliveryError as exc:  # the claim rolls back: nothing half-written
                        counters.add("kafka_errors")
                        log.error("could not publish question", extra={"question_id": question_id, "error": str(exc)})
                        raise ApiError(
                            503, "queue_unavailable", "the message queue is not reachable; try again later"
                        ) from exc
            row = repo.question(question_id) if claim.status == Status.VALIDATED else None
        except psycopg.DataError as exc:
            raise refused_value(exc) from exc
        except DB_ERRORS as exc:
            raise database_unavailable(exc) from exc

        if row is not None:
            result = validated_result(row)
            cache.put(question_id, result)
            log.info("answered from database", extra={"question_id": question_id})
            recorder.record(question_id)
            return (jsonify(status="found", source="database", question_id=question_id, result=result), 200), "stored"
        if claim.is_new_run:
            if claim.run > 1:  # nothing of an earlier run may be served for this one
                cache.delete(question_id)
            counters.add("questions_published")
            QUESTIONS_PUBLISHED.inc()
            log.info(
                "question published",
                extra={"question_id": question_id, "run": claim.run, "previous_status": claim.previous_status},
            )
        recorder.record(question_id)  # the POST that creates the question is its first access
        outcome = "published" if claim.is_new_run else "pending"
        return (jsonify(status=Status.PENDING.value, question_id=question_id), 202), outcome

    @app.get("/status/<question_id>")
    def status(question_id: str):
        if len(question_id) > 128:
            raise ApiError(400, "invalid_question_id", "question_id is too long")
        recorder.flush_before_read()  # this process's accesses are in the row it reads
        try:
            row = repo.question(question_id)
        except psycopg.DataError as exc:
            raise refused_value(exc) from exc
        except DB_ERRORS as exc:
            raise database_unavailable(exc) from exc
        if row is None:
            raise ApiError(404, "not_found", f"no question with id {question_id}")
        return jsonify(
            question_id=row["question_id"],
            status=row["status"],
            question_text=row["question_text"],
            answer=row["final_answer"],
            score=row["final_score"],
            best_score=row["best_score"],
            attempts=row["attempts"],
            runs=row["runs"],
            duplicate_outcomes=row["duplicate_outcomes"],
            access_count=row.get("access_count", 0),
            last_accessed_at=row.get("last_accessed_at"),
            model=row["model"],
            error={"kind": row["error_kind"], "message": row["error_message"]} if row["error_kind"] else None,
            score_history=row["score_history"],
            failures=row["failures"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            completed_at=row["completed_at"],
        )

    @app.get("/metrics")
    def metrics():
        counts = counters.snapshot()
        body: dict[str, Any] = {
            "cache_hits": counts.get("cache_hits", 0),
            "cache_misses": counts.get("cache_misses", 0),
            "db_errors": counts.get("db_errors", 0),
            "kafka_errors": counts.get("kafka_errors", 0),
            "queries": counts.get("queries", 0),
            "questions_published": counts.get("questions_published", 0),
            # /health calls that found the Flink score job missing or not running, and its last state
            "flink_job_missing_checks": counts.get("flink_job_missing_checks", 0),
            "flink_job_state": last_flink_state["state"],
        }
        lookups = body["cache_hits"] + body["cache_misses"]
        body["cache_hit_rate"] = body["cache_hits"] / lookups if lookups else None
        recorder.flush_before_read()  # the totals below include every access answered so far
        body.update(recorder.stats())
        try:
            body.update(repo.metrics())
        except DB_ERRORS as exc:
            raise database_unavailable(exc) from exc
        return jsonify(body)

    @app.get("/health")
    def health():
        checks = {}
        try:
            repo.ping()
            checks["postgres"] = "ok"
        except DB_ERRORS as exc:
            checks["postgres"] = f"down: {exc}"
        try:
            admin.list_topics(topic=topics.QUESTIONS_PENDING, timeout=2)
            checks["kafka"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not reachable
            checks["kafka"] = f"down: {exc}"
        checks["redis"] = "ok" if cache.ping() else "down (cache misses only)"
        checks["flink_job"] = flink_job_check()
        state, http_status = overall_health(checks)
        return jsonify(status=state, service="storage-service", checks=checks), http_status

    def flink_job_check() -> str:
        job = flink.status()
        last_flink_state["state"] = job.state
        if job.running:
            return "ok"
        counters.add("flink_job_missing_checks")
        log.warning("the Flink score job is not running", extra={"state": job.state})
        return f"not running ({job.state}): answers wait unscored on {topics.LLM_RESPONSES_SUCCESS}"

    return app
