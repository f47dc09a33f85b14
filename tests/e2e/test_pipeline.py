"""The pipeline end to end, driven only through its public interfaces (HTTP, Kafka topics).

Each test asks a question nobody asked before and scripts the fake LLM for it; everything else
(Kafka, Flink, BERTScore, PostgreSQL, Redis, every service) is the real thing.
"""

from __future__ import annotations

from datetime import datetime

import psycopg
import requests

from tests.conftest import terminal, unique
from tests.fake_ollama import Answer, Fail

REFERENCE = "The capital of Chile is Santiago."
GOOD = "Santiago is the capital of Chile."
BAD = "Bananas are a yellow fruit rich in potassium that grows in tropical countries."


def test_good_answer_is_validated_on_first_attempt(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(GOOD))
    resp = ask(question, REFERENCE)
    assert resp.status_code == 202
    qid = resp.json()["question_id"]

    final = terminal(status_of, qid)
    assert final["status"] == "validated"
    assert final["answer"] == GOOD
    assert final["score"] >= 0.75
    assert final["attempts"] == 1
    assert datetime.fromisoformat(final["completed_at"]) >= datetime.fromisoformat(final["created_at"])
    assert len(fake_llm.calls_for(question)) == 1
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT status, final_answer FROM questions WHERE question_id = %s", (qid,)).fetchone()
    assert row == ("validated", GOOD)


def test_reference_answer_is_never_shown_to_the_llm(stack, fake_llm, ask, status_of):
    question = unique("Which river crosses Santiago?")
    secret = "The Mapocho river crosses the city of Santiago."
    fake_llm.script(question, Answer("The Mapocho river flows through Santiago."))
    qid = ask(question, secret).json()["question_id"]
    terminal(status_of, qid)
    [call] = fake_llm.calls_for(question)
    assert question in call.prompt
    assert secret not in call.prompt


def test_low_scores_regenerate_until_max_attempts_then_low_quality(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(BAD))
    qid = ask(question, REFERENCE).json()["question_id"]

    final = terminal(status_of, qid, timeout_s=180)
    assert final["status"] == "low_quality"
    assert final["attempts"] == 3
    assert [h["attempt"] for h in final["score_history"]] == [1, 2, 3]
    assert all(h["f1"] < 0.75 for h in final["score_history"])
    assert len(fake_llm.calls_for(question)) == 3


def test_regeneration_can_recover_a_bad_first_answer(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(BAD), Answer(GOOD))
    qid = ask(question, REFERENCE).json()["question_id"]
    final = terminal(status_of, qid, timeout_s=180)
    assert final["status"] == "validated"
    assert final["attempts"] == 2
    assert final["score_history"][0]["f1"] < 0.75 <= final["score_history"][1]["f1"]


def test_overload_503_is_retried_with_exponential_backoff(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Fail(503), Fail(503), Answer(GOOD))
    qid = ask(question, REFERENCE).json()["question_id"]
    final = terminal(status_of, qid, timeout_s=120)
    assert final["status"] == "validated"
    calls = fake_llm.calls_for(question)
    assert [c.outcome.split(":")[0] for c in calls] == ["status 503", "status 503", "answer"]
    base = float(stack.env["RETRY_OVERLOAD_BASE_DELAY_S"])
    first_gap, second_gap = calls[1].at - calls[0].at, calls[2].at - calls[1].at
    assert first_gap >= base * 1
    assert second_gap >= base * 2


def test_quota_429_is_retried_after_the_fixed_delay(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Fail(429), Answer(GOOD))
    qid = ask(question, REFERENCE).json()["question_id"]
    final = terminal(status_of, qid, timeout_s=120)
    assert final["status"] == "validated"
    calls = fake_llm.calls_for(question)
    assert len(calls) == 2
    assert calls[1].at - calls[0].at >= float(stack.env["RETRY_QUOTA_DELAY_S"])


def test_timeouts_count_as_overload_and_exhaust_into_failed(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    timeout_s = float(stack.env["LLM_TIMEOUT_S"])
    fake_llm.script(question, Answer(GOOD, delay_s=timeout_s + 2))
    qid = ask(question, REFERENCE).json()["question_id"]
    final = terminal(status_of, qid, timeout_s=180)
    assert final["status"] == "failed"
    assert final["error"]["kind"] == "retries_exhausted"
    # one first call plus RETRY_OVERLOAD_MAX_RETRIES retries
    assert len(fake_llm.calls_for(question)) == 1 + int(stack.env["RETRY_OVERLOAD_MAX_RETRIES"])


def test_http_500_fails_the_question_without_retry(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Fail(500))
    qid = ask(question, REFERENCE).json()["question_id"]
    final = terminal(status_of, qid)
    assert final["status"] == "failed"
    assert final["error"]["kind"] == "error"
    assert final["failures"][0]["status_code"] == 500
    assert len(fake_llm.calls_for(question)) == 1


def test_duplicate_post_while_pending_is_one_pipeline_run(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(GOOD, delay_s=1.5))
    first, second = ask(question, REFERENCE), ask("  " + question.upper() + " ", REFERENCE)
    assert first.status_code == second.status_code == 202
    assert first.json()["question_id"] == second.json()["question_id"]
    terminal(status_of, first.json()["question_id"])
    assert len(fake_llm.calls_for(question)) == 1


def test_validated_question_is_answered_from_cache_then_database(stack, fake_llm, ask, status_of):
    import redis

    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(GOOD))
    qid = ask(question, REFERENCE).json()["question_id"]
    assert terminal(status_of, qid)["status"] == "validated"

    cached = ask(question, REFERENCE)
    assert cached.status_code == 200
    assert cached.json()["source"] == "cache"
    assert cached.json()["result"]["answer"] == GOOD

    redis.Redis.from_url(stack.redis_url).delete(f"answer:{qid}")
    from_db = ask(question, REFERENCE)
    assert from_db.status_code == 200
    assert from_db.json()["source"] == "database"
    assert ask(question, REFERENCE).json()["source"] == "cache"  # warmed again
    assert len(fake_llm.calls_for(question)) == 1


def test_metrics_report_outcomes_and_cache(stack, ask):
    body = requests.get(f"{stack.storage_url}/metrics", timeout=10).json()
    for key in ("total_responses", "cache_hits", "cache_misses", "db_errors", "average_score", "attempts_distribution"):
        assert key in body
    assert body["cache_hits"] + body["cache_misses"] >= 1
