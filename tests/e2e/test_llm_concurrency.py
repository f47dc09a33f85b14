"""Many LLM calls in flight per llm_consumer (LLM_MAX_CONCURRENCY, the adaptive limit), end to end:
faster than one call at a time, nothing lost or duplicated, even when a consumer is killed mid-calls.

The fake LLM answers each question after a scripted delay and serves any number of calls at once.
Speed is asserted as a ratio to the sequential expectation (one call at a time per consumer), never
as a wall-clock target.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter

import psycopg
import pytest
from confluent_kafka import Consumer

from common import topics
from common.messages import PipelineMessage
from llm_consumer.config import LLMConsumerSettings
from scripts.platform.health import topic_partitions
from scripts.platform.layout import Layout
from tests.conftest import unique, wait_until
from tests.e2e.test_crash_safety import llm_consumer_pids
from tests.fake_ollama import Answer

GOOD = "Santiago is the capital of Chile."
REFERENCE = "The capital of Chile is Santiago."
TERMINAL_TOPICS = [topics.VALIDATED_RESPONSES, topics.LOW_QUALITY_RESPONSES, topics.LLM_RESPONSES_ERROR]


@pytest.fixture(autouse=True)
def needs_concurrency(stack):
    limit = LLMConsumerSettings.from_env(stack.env).llm_max_concurrency
    if limit < 8:
        pytest.skip(f"LLM_MAX_CONCURRENCY={limit}: the consumers make one call (or a few) at a time")


def ask_many(ask, fake_llm, count: int, delay_s: float) -> dict[str, str]:
    """`count` new questions, each answered well after `delay_s`; question_id -> question text."""
    asked = {}
    for n in range(count):
        question = unique(f"What is the capital of Chile? ({n})")
        fake_llm.script(question, Answer(GOOD, delay_s=delay_s))
        resp = ask(question, REFERENCE)
        assert resp.status_code == 202, resp.text
        asked[resp.json()["question_id"]] = question
    return asked


def statuses(database_url: str, question_ids: list[str]) -> dict[str, tuple]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT question_id, status, attempts, runs FROM questions WHERE question_id = ANY(%s)",
            (question_ids,),
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


def all_terminal(database_url: str, question_ids: list[str]) -> bool:
    known = statuses(database_url, question_ids)
    return len(known) == len(question_ids) and all(status != "pending" for status, _, _ in known.values())


def each_validated_once(stack, fake_llm, label: str, count: int) -> None:
    """Ask `count` new questions scripted to be answered right; each ends validated, exactly once."""
    import requests

    asked = {}
    for n in range(count):
        question = unique(f"What is the capital of Chile? ({label} {n})")
        fake_llm.script(question, Answer(GOOD))
        resp = requests.post(
            f"{stack.storage_url}/query", json={"question_text": question, "original_answer": REFERENCE}, timeout=30
        )
        assert resp.status_code == 202, resp.text
        asked[resp.json()["question_id"]] = question
    ids = list(asked)
    wait_until(lambda: all_terminal(stack.database_url, ids), 240, interval_s=1, what="every question terminal")
    assert {status for status, _, _ in statuses(stack.database_url, ids).values()} == {"validated"}
    assert terminal_messages(stack.kafka_bootstrap, set(ids)) == Counter(dict.fromkeys(ids, 1))


def terminal_messages(bootstrap: str, question_ids: set[str], timeout_s: float = 60) -> Counter:
    """How many terminal outcomes each question has on the terminal topics (read from the start)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"t-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(TERMINAL_TOPICS)
    seen: Counter = Counter()
    deadline, quiet_since = time.monotonic() + timeout_s, time.monotonic()
    try:
        # Read until every question was seen and nothing new came for a few seconds (late duplicates).
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                if set(seen) >= question_ids and time.monotonic() - quiet_since > 5:
                    break
                continue
            quiet_since = time.monotonic()
            try:
                question_id = PipelineMessage.from_bytes(msg.value()).question_id
            except ValueError:
                continue
            if question_id in question_ids:
                seen[question_id] += 1
    finally:
        consumer.close()
    return seen


def test_many_calls_in_flight_finish_much_faster_than_one_at_a_time(stack, fake_llm, ask):
    count, delay_s = 100, 1.0
    started = time.monotonic()
    asked = ask_many(ask, fake_llm, count, delay_s)
    ids = list(asked)
    wait_until(lambda: all_terminal(stack.database_url, ids), 180, interval_s=0.5, what="every question terminal")
    elapsed = time.monotonic() - started
    # One call at a time per consumer, counting the LLM time alone (and as if the partitions split
    # evenly, which 3 partitions over 2 consumers do not): the least the sequential consumers need.
    # Half of it is out of reach without calls in flight; the margin beyond that is for the rest of
    # the pipeline on a 2-core machine (Flink's ~1 s bundles, scoring): measured 12-20 s of 50.
    sequential_s = (
        count
        * delay_s
        / min(len(llm_consumer_pids()), topic_partitions(Layout("test-stack", stack.env), topics.QUESTIONS_PENDING))
    )
    assert elapsed < sequential_s / 2, f"{count} questions took {elapsed:.1f}s; one at a time: {sequential_s:.0f}s"
    assert {status for status, _, _ in statuses(stack.database_url, ids).values()} == {"validated"}
    assert [len(fake_llm.calls_for(asked[q])) for q in ids] == [1] * count  # exactly the expected calls
    assert terminal_messages(stack.kafka_bootstrap, set(ids)) == Counter(dict.fromkeys(ids, 1))


def test_sigkill_with_many_calls_in_flight_loses_and_duplicates_nothing(stack, fake_llm, ask):
    count, delay_s = 40, 2.0  # below the test stack's LLM_TIMEOUT_S (3 s): no call times out
    asked = ask_many(ask, fake_llm, count, delay_s)
    ids = list(asked)
    wait_until(
        lambda: sum(1 for q in ids if fake_llm.calls_for(asked[q])) >= 20, 60, what="many calls in flight at once"
    )
    consumers = llm_consumer_pids()
    victim = consumers[0]
    os.kill(victim, signal.SIGKILL)  # mid-calls: supervisord restarts it; its messages are redelivered
    wait_until(lambda: all_terminal(stack.database_url, ids), 240, interval_s=0.5, what="every question terminal")
    final = statuses(stack.database_url, ids)
    assert set(final.values()) == {("validated", 1, 1)}  # one run, one attempt, validated
    calls = [len(fake_llm.calls_for(asked[q])) for q in ids]
    assert min(calls) >= 1 and max(calls) <= 2  # a call lost with the process is made once more, no more
    # Each question ended once: a second terminal outcome would mean a second, independent chain.
    assert terminal_messages(stack.kafka_bootstrap, set(ids)) == Counter(dict.fromkeys(ids, 1))
    wait_until(lambda: len(llm_consumer_pids()) == len(consumers), 60, what="every consumer back")
