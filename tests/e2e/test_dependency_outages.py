"""What clients see while a dependency is down, and that the pipeline recovers afterwards."""

from __future__ import annotations

import json

import psycopg
import requests

from common import topics
from common.messages import question_id_for
from tests.conftest import STATE, first_message, supervisorctl, terminal, unique, wait_until
from tests.fake_ollama import Answer

GOOD = "Santiago is the capital of Chile."
REFERENCE = "The capital of Chile is Santiago."


def health(stack) -> requests.Response:
    return requests.get(f"{stack.storage_url}/health", timeout=10)


def test_redis_down_is_a_cache_miss_not_an_outage(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(GOOD))
    qid = ask(question, REFERENCE).json()["question_id"]
    wait_until(lambda: (s := status_of(qid)) and s["status"] == "validated", 120, what="validated")

    supervisorctl("stop", "redis")
    try:
        body = health(stack).json()
        assert body["status"] == "degraded" and body["checks"]["postgres"] == "ok"
        resp = ask(question, REFERENCE)
        assert resp.status_code == 200 and resp.json()["source"] == "database"
    finally:
        supervisorctl("start", "redis")
    assert len(fake_llm.calls_for(question)) == 1


def test_postgres_down_answers_503_and_writes_nothing_then_recovers(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(GOOD))
    supervisorctl("stop", "postgres")
    try:
        resp = ask(question, REFERENCE)
        assert resp.status_code == 503 and resp.json()["error"] == "database_unavailable"
        assert health(stack).status_code == 503
        assert requests.get(f"{stack.storage_url}/metrics", timeout=10).status_code == 503
    finally:
        supervisorctl("start", "postgres")
    assert fake_llm.calls_for(question) == []  # nothing was published while the claim could not be written

    wait_until(lambda: health(stack).status_code == 200, 60, what="storage_service healthy again")
    qid = ask(question, REFERENCE).json()["question_id"]
    final = terminal(status_of, qid, 120)
    assert final["status"] == "validated"
    with psycopg.connect(stack.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM attempts WHERE question_id = %s", (qid,)).fetchone() == (1,)
    assert requests.get(f"{stack.storage_url}/metrics", timeout=10).json()["db_errors"] >= 1


def transient_failures_logged(question_id: str) -> int:
    """How often storage-consumer reported the database unavailable for this question (its JSON log)."""
    count = 0
    for line in (STATE / "test-stack" / "logs" / "storage-consumer.log").read_text().splitlines():
        if question_id in line and line.startswith("{"):
            entry = json.loads(line)
            count += (
                entry.get("msg") == "dependency unavailable; will retry" and entry.get("question_id") == question_id
            )
    return count


def test_outcome_arriving_while_the_database_is_down_waits_and_is_stored(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(GOOD, delay_s=2))
    qid = ask(question, REFERENCE).json()["question_id"]
    wait_until(lambda: fake_llm.calls_for(question), 30, what="the LLM call")
    supervisorctl("stop", "postgres")
    try:
        # The scored outcome reaches storage-consumer, which must hold it as a transient failure
        # (retried until the database is back; never dead-lettered: tests/unit/test_consumer_runner.py).
        wait_until(lambda: transient_failures_logged(qid) >= 2, 90, interval_s=1, what="storage-consumer retrying")
    finally:
        supervisorctl("start", "postgres")
    final = terminal(status_of, qid, 120)
    assert final["status"] == "validated"


def test_kafka_down_answers_503_and_publishes_nothing_then_recovers(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(GOOD))
    qid = question_id_for(question)
    supervisorctl("stop", "kafka")
    try:
        resp = ask(question, REFERENCE)
        assert resp.status_code == 503 and resp.json()["error"] == "queue_unavailable"
        assert status_of(qid) is None  # the claim was rolled back: no question left pending forever
        assert health(stack).status_code == 503
    finally:
        supervisorctl("start", "kafka")

    wait_until(lambda: health(stack).status_code == 200, 120, interval_s=1, what="storage_service healthy again")
    assert ask(question, REFERENCE).status_code == 202
    # Consumers reconnect and the Flink job restarts from its last checkpoint on its own.
    final = terminal(status_of, qid, 240)
    assert final["status"] == "validated"
    assert len(fake_llm.calls_for(question)) == 1  # the rejected request was never delivered later


def test_scorer_down_holds_answers_without_inventing_a_score(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(GOOD))
    supervisorctl("stop", "score-validator")
    try:
        qid = ask(question, REFERENCE).json()["question_id"]
        first_message(
            stack.kafka_bootstrap,
            topics.LLM_RESPONSES_SUCCESS,
            lambda msg: msg.key() == qid.encode(),
            60,
            what="the answer on llm-responses-success",
        )
        status = status_of(qid)
        assert status["status"] == "pending" and status["score_history"] == []  # no score without a scorer
    finally:
        supervisorctl("start", "score-validator")
    final = terminal(status_of, qid, 240)
    assert final["status"] == "validated" and len(final["score_history"]) == 1
    assert len(fake_llm.calls_for(question)) == 1
