"""What a client meets at the edges: bad input, unknown ids, garbage on a topic."""

from __future__ import annotations

import json
import uuid

import requests
from confluent_kafka import Producer

from common import topics
from tests.conftest import first_message, unique, wait_until
from tests.fake_ollama import Answer


def test_bad_inputs_get_json_errors(stack):
    url = f"{stack.storage_url}/query"
    cases = [
        (dict(data="question_text=hi", headers={"Content-Type": "application/x-www-form-urlencoded"}), 415),
        (dict(data="{not json", headers={"Content-Type": "application/json"}), 400),
        (dict(json=["a list"]), 400),
        (dict(json={}), 400),
        (dict(json={"question_text": 42}), 400),
        (dict(json={"question_text": "   "}), 400),
        (dict(json={"question_text": "ok?", "original_answer": ["x"]}), 400),
        (dict(json={"question_text": "x" * 5000}), 413),
        (dict(data=json.dumps({"question_text": "x" * 100_000}), headers={"Content-Type": "application/json"}), 413),
    ]
    for kwargs, expected in cases:
        resp = requests.post(url, timeout=10, **kwargs)
        assert resp.status_code == expected, (kwargs, resp.status_code, resp.text[:200])
        assert resp.headers["Content-Type"].startswith("application/json")
        assert "error" in resp.json() and "Traceback" not in resp.text


def test_unknown_question_and_route(stack):
    resp = requests.get(f"{stack.storage_url}/status/{uuid.uuid4().hex}", timeout=10)
    assert resp.status_code == 404 and resp.json()["error"] == "not_found"
    assert requests.get(f"{stack.storage_url}/nope", timeout=10).status_code == 404
    assert requests.get(f"{stack.storage_url}/query", timeout=10).status_code == 405


def test_health_reports_dependencies(stack):
    body = requests.get(f"{stack.storage_url}/health", timeout=10).json()
    assert body["status"] == "healthy"
    assert body["checks"] == {"postgres": "ok", "kafka": "ok", "redis": "ok"}


def test_garbage_goes_to_dead_letter_and_the_consumer_keeps_going(stack, fake_llm, ask, status_of):
    marker = uuid.uuid4().hex
    garbage = f"garbage-{marker}".encode()
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    producer.produce(topics.QUESTIONS_PENDING, key=b"not-a-question", value=garbage)
    producer.flush(10)

    found = first_message(
        stack.kafka_bootstrap,
        topics.DEAD_LETTER,
        lambda msg: json.loads(msg.value()).get("raw_text") == garbage.decode(),
        60,
        what="the garbage on dead-letter",
    )
    envelope = json.loads(found.value())
    assert envelope["source_topic"] == topics.QUESTIONS_PENDING
    assert envelope["reason"].startswith("unparseable")

    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer("Santiago is the capital of Chile."))
    qid = ask(question, "The capital of Chile is Santiago.").json()["question_id"]
    wait_until(lambda: (s := status_of(qid)) and s["status"] == "validated", 120, what="a question after the garbage")
