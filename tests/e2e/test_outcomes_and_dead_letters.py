"""Issue 8 on the running stack: the first terminal outcome of a run wins, dead letters end their
question, a stale pending question can be asked again, and the operator commands bring questions back.

Duplicates and dead letters are injected on the real topics the way at-least-once delivery and
poison messages produce them; everything else is the real pipeline.
"""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import requests
from confluent_kafka import Producer

import redis
from common import topics
from common.messages import DeadLetter, PipelineMessage, Score, ScoreRecord, question_id_for
from tests.conftest import ROOT, STATE, terminal, unique, wait_until
from tests.fake_ollama import Answer, Fail

REFERENCE = "The capital of Chile is Santiago."
GOOD = "Santiago is the capital of Chile."
BAD = "Bananas are a yellow fruit rich in potassium that grows in tropical countries."


def produce(stack, topic: str, key: str, value: bytes) -> None:
    # murmur2, as the pipeline's producers: the message lands behind the question's earlier ones
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "partitioner": "murmur2_random"})
    producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(10) == 0


def outcome(question: str, run: int, answer: str, f1: float, attempts: int) -> PipelineMessage:
    """A terminal message as the Flink job writes it, for a chain that never happened."""
    history = [
        ScoreRecord(attempt=n, f1=f1, precision=f1, recall=f1, llm_answer=answer) for n in range(1, attempts + 1)
    ]
    return PipelineMessage.new(question, REFERENCE).evolve(
        run=run,
        attempt=attempts,
        llm_answer=answer,
        model="injected",
        score=Score(precision=f1, recall=f1, f1=f1, model="injected"),
        score_history=history,
    )


def insert_pending(stack, question: str) -> str:
    """A question left pending with no message on its way (what a lost chain used to leave behind)."""
    qid = question_id_for(question)
    with psycopg.connect(stack.database_url) as conn:
        conn.execute(
            "INSERT INTO questions (question_id, question_text, original_answer, status) "
            "VALUES (%s, %s, %s, 'pending')",
            (qid, question, REFERENCE),
        )
    return qid


def storage_consumer_logged(question_id: str, text: str) -> int:
    """How often storage-consumer logged `text` for this question (its JSON log)."""
    count = 0
    for line in (STATE / "test-stack" / "logs" / "storage-consumer.log").read_text().splitlines():
        if question_id in line and line.startswith("{"):
            entry = json.loads(line)
            count += entry.get("question_id") == question_id and entry.get("msg") == text
    return count


def common_cli(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "common", *args],
        cwd=ROOT,
        env={
            **stack.env,
            "DATABASE_URL": stack.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
            "STORAGE_URL": stack.storage_url,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def metrics(stack) -> dict:
    return requests.get(f"{stack.storage_url}/metrics", timeout=10).json()


def test_a_late_duplicate_outcome_changes_neither_the_row_nor_the_cache(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(GOOD))
    qid = ask(question, REFERENCE).json()["question_id"]
    before = terminal(status_of, qid)
    assert before["status"] == "validated" and before["duplicate_outcomes"] == 0
    cache = redis.Redis.from_url(stack.redis_url)
    cached = wait_until(lambda: cache.get(f"answer:{qid}"), 30, what="the validated answer in Redis")
    duplicates_before = metrics(stack)["duplicate_outcomes"]

    # The same run ending again: a low-quality verdict of a forked chain, and a second validation.
    produce(stack, topics.LOW_QUALITY_RESPONSES, qid, outcome(question, 1, BAD, 0.1, attempts=3).to_bytes())
    produce(stack, topics.VALIDATED_RESPONSES, qid, outcome(question, 1, "A forked answer.", 0.99, 2).to_bytes())
    after = wait_until(
        lambda: (s := status_of(qid)) and s["duplicate_outcomes"] == 2 and s, 60, what="both duplicates counted"
    )

    for field in ("status", "answer", "score", "best_score", "attempts", "runs", "model", "completed_at"):
        assert after[field] == before[field], field
    assert after["score_history"] == before["score_history"]  # no attempts of the forked chains
    assert cache.get(f"answer:{qid}") == cached
    assert ask(question, REFERENCE).json()["result"]["answer"] == GOOD
    assert metrics(stack)["duplicate_outcomes"] >= duplicates_before + 2


def test_a_message_postgresql_refuses_is_dead_lettered_and_fails_its_question(stack, status_of):
    question = unique("What is the capital of Chile?")
    qid = insert_pending(stack, question)
    poison = outcome(question, 1, "Santiago\x00 is the capital.", 0.9, attempts=1)  # PostgreSQL refuses NUL
    produce(stack, topics.VALIDATED_RESPONSES, qid, poison.to_bytes())

    # storage-consumer fails on it a few times (with backoff), dead-letters it, then reads its own
    # dead letter and ends the question.
    final = terminal(status_of, qid, timeout_s=120)
    assert final["status"] == "failed"
    assert final["answer"] is None and final["score_history"] == []
    assert final["error"]["kind"] == "dead_letter"
    assert "storage-consumer" in final["error"]["message"] and "NUL" in final["error"]["message"]
    [failure] = final["failures"]
    assert failure["kind"] == "dead_letter" and failure["run"] == 1 and failure["message"] == final["error"]["message"]
    assert metrics(stack)["questions_failed_by_dead_letter"] >= 1


def test_a_dead_letter_fails_its_question_and_replay_brings_it_back(stack, fake_llm, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(GOOD))
    qid = insert_pending(stack, question)
    lost = PipelineMessage.new(question, REFERENCE)
    letter = DeadLetter.wrap(
        lost.to_bytes(),
        stage="e2e-test",
        reason="lost by hand",
        source_topic=topics.QUESTIONS_PENDING,
        key=qid.encode(),
        message=lost,
    )
    produce(stack, topics.DEAD_LETTER, qid, letter.to_bytes())

    failed = terminal(status_of, qid, timeout_s=60)
    assert failed["status"] == "failed" and failed["error"]["kind"] == "dead_letter"
    assert failed["error"]["message"] == "dead-lettered by e2e-test from questions-pending: lost by hand"
    assert fake_llm.calls_for(question) == []

    dry = common_cli(stack, "replay-dead-letter", "--question-id", qid, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would replay 1 message(s)") and qid in dry.stdout
    assert status_of(qid)["status"] == "failed"  # a dry run changes nothing

    done = common_cli(stack, "replay-dead-letter", "--question-id", qid)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("replayed 1 message(s)"), done.stdout
    assert "reading" in done.stderr  # progress
    final = wait_until(
        lambda: (s := status_of(qid)) and s["status"] == "validated" and s, 120, what="the replayed question validated"
    )
    assert final["answer"] == GOOD and final["runs"] == 1
    assert len(fake_llm.calls_for(question)) == 1

    again = common_cli(stack, "replay-dead-letter", "--question-id", qid)
    assert again.stdout.startswith("replayed 0 message(s)")
    assert "question already ended validated" in again.stdout


def test_a_stale_pending_question_can_be_asked_again_and_its_old_run_is_ignored(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(GOOD, delay_s=2), Answer(GOOD))
    qid = ask(question, REFERENCE).json()["question_id"]
    assert ask(question, REFERENCE).status_code == 202 and status_of(qid)["runs"] == 1  # not stale: same run

    with psycopg.connect(stack.database_url) as conn:  # pending for longer than PENDING_TIMEOUT_S (900 s)
        conn.execute(
            "UPDATE questions SET updated_at = now() - interval '1 hour' WHERE question_id = %s AND status = 'pending'",
            (qid,),
        )
    assert ask(question, REFERENCE).status_code == 202
    assert status_of(qid)["runs"] == 2

    final = terminal(status_of, qid, timeout_s=120)
    assert final["status"] == "validated" and final["runs"] == 2
    assert {h["run"] for h in final["score_history"]} == {2}
    assert len(fake_llm.calls_for(question)) <= 2

    # An outcome of run 1 arriving now is ignored, and is not a duplicate of run 2.
    ignored = "outcome of an older run ignored"
    seen = storage_consumer_logged(qid, ignored)  # run 1's own answer, if the LLM consumer still made it
    produce(stack, topics.VALIDATED_RESPONSES, qid, outcome(question, 1, "An old answer.", 0.99, 1).to_bytes())
    wait_until(lambda: storage_consumer_logged(qid, ignored) > seen, 60, what="the old run's outcome ignored")
    after = status_of(qid)
    assert after["answer"] == final["answer"] and after["runs"] == 2 and after["duplicate_outcomes"] == 0


def test_rerun_starts_a_new_run_of_a_failed_question(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Fail(500), Answer(GOOD))
    qid = ask(question, REFERENCE).json()["question_id"]
    assert terminal(status_of, qid)["status"] == "failed"

    done = common_cli(stack, "rerun", qid)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"started run 2 of {qid} (it was failed in run 1)"
    final = terminal(status_of, qid)
    assert final["status"] == "validated" and final["runs"] == 2 and final["answer"] == GOOD

    validated = common_cli(stack, "rerun", qid)
    assert validated.returncode == 0 and "nothing to re-run" in validated.stdout
    assert len(fake_llm.calls_for(question)) == 2
