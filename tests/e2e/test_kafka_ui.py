"""The native Kafka browser (:8080) shows the pipeline's topics, consumer lag and messages."""

import requests

from common import topics
from tests.conftest import unique, wait_until
from tests.fake_ollama import Answer

UI = "http://localhost:8080"


def test_lists_every_topic_and_the_pipeline_groups(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer("Santiago is the capital of Chile."))
    qid = ask(question, "The capital of Chile is Santiago.").json()["question_id"]
    wait_until(lambda: (s := status_of(qid)) and s["status"] == "validated", 120, what="a validated question")

    body = requests.get(f"{UI}/api/topics", timeout=15).json()
    names = {t["name"] for t in body["topics"]}
    assert set(topics.ALL_TOPICS) <= names
    assert next(t for t in body["topics"] if t["name"] == topics.VALIDATED_RESPONSES)["messages"] >= 1
    groups = {g["group"] for g in body["consumer_groups"]}
    assert {topics.GROUP_LLM_CONSUMER, topics.GROUP_STORAGE} <= groups

    messages = requests.get(f"{UI}/api/topics/{topics.QUESTIONS_PENDING}/messages?limit=200", timeout=15).json()[
        "messages"
    ]
    assert any(m["key"] == qid for m in messages)

    page = requests.get(f"{UI}/", timeout=15)
    assert page.status_code == 200 and topics.DEAD_LETTER in page.text
    topic_page = requests.get(f"{UI}/topics/{topics.VALIDATED_RESPONSES}", timeout=15)
    assert topic_page.status_code == 200 and "Latest" in topic_page.text


def test_unknown_topic_and_bad_limit(stack):
    assert requests.get(f"{UI}/api/topics/no-such-topic/messages", timeout=15).status_code == 404
    resp = requests.get(f"{UI}/api/topics/{topics.DEAD_LETTER}/messages?limit=lots", timeout=15)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_limit"
