"""Records the Flink job cannot score (a null value, bytes that are not a message, an answer the scorer
refuses) go to dead-letter with the reason, an empty answer gets its defined score, and a normal
question asked right after them still validates: one record never stalls the stream."""

from __future__ import annotations

import json
import uuid

from confluent_kafka import Producer

from common import topics
from common.messages import DeadLetter, PipelineMessage
from tests.conftest import first_message, terminal, unique
from tests.fake_ollama import Answer

REFERENCE = "The capital of Chile is Santiago."
GOOD = "Santiago is the capital of Chile."


def crafted(question: str, **fields) -> PipelineMessage:
    return PipelineMessage.new(question, REFERENCE).evolve(model="fake", **fields)


def test_unscorable_records_are_dead_lettered_and_the_stream_goes_on(stack, fake_llm, ask, status_of):
    refused = crafted(unique("Refused answer?"), llm_answer="PLACEHOLDER")
    # A lone surrogate: valid JSON, but text the scorer refuses (400), every time.
    refused_bytes = json.dumps(refused.to_dict()).replace("PLACEHOLDER", "\\ud800 lone").encode()
    empty = crafted(unique("Empty answer?"), llm_answer="", attempt=3)
    null_key, binary_key = f"null-{uuid.uuid4().hex}", f"binary-{uuid.uuid4().hex}"

    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    producer.produce(topics.LLM_RESPONSES_SUCCESS, key=null_key, value=None)
    producer.produce(topics.LLM_RESPONSES_SUCCESS, key=binary_key, value=b"\xff\xfe\x00\x81 not a message")
    producer.produce(topics.LLM_RESPONSES_SUCCESS, key=refused.question_id, value=refused_bytes)
    producer.produce(topics.LLM_RESPONSES_SUCCESS, key=empty.question_id, value=empty.to_bytes())
    assert producer.flush(10) == 0

    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(GOOD))
    qid = ask(question, REFERENCE).json()["question_id"]
    assert terminal(status_of, qid, timeout_s=120)["status"] == "validated"

    def dead_letter_for(key: str) -> DeadLetter:
        msg = first_message(
            stack.kafka_bootstrap,
            topics.DEAD_LETTER,
            lambda m: m.key() == key.encode() and b'"flink_job"' in m.value(),
            60,
            f"the Flink job's dead letter for {key}",
        )
        return DeadLetter.from_bytes(msg.value())

    null_letter = dead_letter_for(null_key)
    assert "null record value" in null_letter.reason and null_letter.offset is not None
    binary_letter = dead_letter_for(binary_key)
    assert "not JSON" in binary_letter.reason and binary_letter.raw() == b"\xff\xfe\x00\x81 not a message"
    refused_letter = dead_letter_for(refused.question_id)
    assert "could not score" in refused_letter.reason and "HTTP 400" in refused_letter.reason
    assert refused_letter.question_id == refused.question_id

    # The empty answer was scored (0, its defined score), not stalled: at the last attempt -> low quality.
    scored = first_message(
        stack.kafka_bootstrap,
        topics.LOW_QUALITY_RESPONSES,
        lambda m: m.key() == empty.question_id.encode(),
        60,
        "the empty answer's low-quality outcome",
    )
    assert PipelineMessage.from_bytes(scored.value()).score.f1 == 0.0
