import json

import pytest

from common import topics
from common.messages import SCHEMA_VERSION, DeadLetter, MessageError, PipelineMessage, question_id_for


def test_round_trip_keeps_every_field():
    msg = PipelineMessage.new("¿Cuál es la capital de Chile?", "Santiago").evolve(llm_answer="Santiago", attempt=2)
    again = PipelineMessage.from_bytes(msg.to_bytes())
    assert again == msg
    assert again.schema_version == SCHEMA_VERSION


def test_unknown_fields_survive_a_republish():
    data = PipelineMessage.new("q?").to_dict() | {"added_by_a_newer_producer": {"x": 1}}
    msg = PipelineMessage.from_bytes(json.dumps(data).encode())
    republished = json.loads(msg.evolve(attempt=2).to_bytes())
    assert republished["added_by_a_newer_producer"] == {"x": 1}


def test_question_id_ignores_case_width_and_spacing():
    assert question_id_for("  What is   the capital?\n") == question_id_for("what is the CAPITAL?")
    assert question_id_for("ｗｈａｔ") == question_id_for("what")  # NFKC: full-width letters
    assert question_id_for("a?") != question_id_for("b?")


def test_evolve_refreshes_updated_at_and_leaves_the_original():
    msg = PipelineMessage.new("q?")
    later = msg.evolve(retry_count=1)
    assert msg.retry_count == 0 and later.retry_count == 1
    assert later.updated_at >= msg.updated_at
    assert later.created_at == msg.created_at


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"question_id": "x", "question_text": "q"}',  # no schema_version
        b'{"schema_version": 99, "question_id": "x", "question_text": "q"}',
        b'{"schema_version": 1, "question_id": "x"}',  # no question_text
        b'{"schema_version": 1, "question_id": "x", "question_text": "q", "attempt": 0}',
        b'{"schema_version": 1, "question_id": "x", "question_text": "q", "score": {"f1": "high"}}',
    ],
)
def test_invalid_messages_are_rejected(raw):
    with pytest.raises(MessageError):
        PipelineMessage.from_bytes(raw)


def test_key_is_the_question_id():
    msg = PipelineMessage.new("q?")
    assert msg.key == msg.question_id.encode()


def test_topic_names_are_unique_and_complete():
    assert len(set(topics.ALL_TOPICS)) == len(topics.ALL_TOPICS) == 9
    assert topics.DEAD_LETTER in topics.ALL_TOPICS


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 5000,  # a few KB of `[[[[`: RecursionError inside the JSON decoder
        b'{"schema_version": 1, "question_id": "x", "question_text": "q", "deep": ' + b"[" * 100 + b"]" * 100 + b"}",
        b"null",
        b"\xc3\x28",  # invalid UTF-8 sequence
    ],
)
def test_every_decode_failure_is_a_message_error(raw):
    with pytest.raises(MessageError):
        PipelineMessage.from_bytes(raw)


def test_nesting_within_the_limit_survives_a_republish():
    data = PipelineMessage.new("q?").to_dict() | {"nested": json.loads("[" * 50 + "]" * 50)}
    msg = PipelineMessage.from_bytes(json.dumps(data).encode())
    assert json.loads(msg.evolve(attempt=2).to_bytes())["nested"] == data["nested"]


def test_retry_budgets_default_to_zero_and_round_trip():
    msg = PipelineMessage.new("q?")
    assert (msg.retry_count, msg.overload_retries, msg.quota_retries) == (0, 0, 0)
    again = PipelineMessage.from_bytes(msg.evolve(retry_count=3, overload_retries=2, quota_retries=1).to_bytes())
    assert (again.retry_count, again.overload_retries, again.quota_retries) == (3, 2, 1)


@pytest.mark.parametrize("raw", [None, b"", b"[" * 5000, b"\xff", b"{}", b'{"stage": 1}'])
def test_invalid_dead_letters_are_rejected(raw):
    with pytest.raises(MessageError):
        DeadLetter.from_bytes(raw)
