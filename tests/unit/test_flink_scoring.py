"""The Flink job's pure decisions: source records, outage vs unscorable record, outputs."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from common import topics
from common.messages import DeadLetter, PipelineMessage, Score
from flink_job.scoring import (
    CallResult,
    ScorerFailure,
    ScorerHealth,
    SourceRecord,
    Step,
    Unscorable,
    backoff_s,
    classify_status,
    dead_letter_output,
    decode_message,
    decode_source_record,
    judge_failure,
    routed_output,
    score_until_judged,
)

SCORE = Score(precision=0.9, recall=0.9, f1=0.9, model="m")
REFUSED = CallResult(failure=ScorerFailure.REFUSED, detail="HTTP 400: bad")
DOWN = CallResult(failure=ScorerFailure.UNAVAILABLE, detail="ClientConnectorError: refused")
HTTP_500 = CallResult(failure=ScorerFailure.UNAVAILABLE, detail="HTTP 500: internal")


def envelope(value: bytes | None, key: bytes | None = b"qid", partition: int = 2, offset: int = 41) -> str:
    b64 = lambda b: None if b is None else base64.b64encode(b).decode()  # noqa: E731
    return json.dumps(
        {
            "topic": "llm-responses-success",
            "partition": partition,
            "offset": offset,
            "key": b64(key),
            "value": b64(value),
        }
    )


def message(**changes) -> PipelineMessage:
    return PipelineMessage.new("What is the capital of Chile?", "Santiago").evolve(llm_answer="Santiago.", **changes)


# --- source records -------------------------------------------------------------------------


def test_source_record_keeps_bytes_key_partition_and_offset():
    record = decode_source_record(envelope(b"\xff\xfe not utf-8", key=b"abc"))
    assert record == SourceRecord(
        value=b"\xff\xfe not utf-8", key=b"abc", topic="llm-responses-success", partition=2, offset=41
    )


def test_null_value_is_told_apart_from_an_empty_one():
    assert decode_source_record(envelope(None)).value is None
    assert decode_source_record(envelope(b"")).value == b""


def test_a_plain_message_text_is_taken_as_the_value():
    text = message().to_bytes().decode()
    assert decode_source_record(text).value == text.encode()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "null record value"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"[[[[" * 5000, "not JSON"),
        (b"{}", "schema_version"),
    ],
)
def test_records_that_are_not_messages_give_the_reason(value, reason):
    with pytest.raises(ValueError, match=reason):
        decode_message(SourceRecord(value=value))


# --- outputs --------------------------------------------------------------------------------


def test_dead_letter_carries_the_record_the_reason_and_the_question():
    record = SourceRecord(value=b"\xff\xfe", key=b"q-1", partition=1, offset=7)
    topic, key, value = dead_letter_output(record, "unparseable: not JSON \ud800")
    letter = DeadLetter.from_bytes(value.encode())
    assert (topic, key) == (topics.DEAD_LETTER, "q-1")
    assert (letter.stage, letter.partition, letter.offset, letter.question_id) == ("flink_job", 1, 7, "q-1")
    assert letter.raw() == b"\xff\xfe" and letter.reason.startswith("unparseable: not JSON")


def test_dead_letter_of_a_parsed_message_is_keyed_by_its_question_id():
    msg = message()
    _, key, value = dead_letter_output(SourceRecord(value=msg.to_bytes(), key=None), "scorer refused", msg)
    assert key == msg.question_id == DeadLetter.from_bytes(value.encode()).question_id


def test_routed_output_is_keyed_by_question_id():
    msg = message()
    topic, key, value = routed_output(msg, SCORE, 0.75, 3)
    assert (topic, key) == (topics.VALIDATED_RESPONSES, msg.question_id)
    assert PipelineMessage.from_bytes(value.encode()).score == SCORE


# --- outage or unscorable record --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [(200, None), (400, ScorerFailure.REFUSED), (413, ScorerFailure.REFUSED), (415, ScorerFailure.REFUSED)]
    + [(s, ScorerFailure.UNAVAILABLE) for s in (408, 429, 500, 502, 503)],
)
def test_status_classification(status, kind):
    assert classify_status(status) is kind


def test_failures_while_nothing_answers_are_an_outage_without_strikes():
    assert judge_failure(ScorerFailure.UNAVAILABLE, scorer_answered=False, strikes=2, max_strikes=3) == (Step.WAIT, 2)


def test_failures_while_the_scorer_answers_are_strikes_until_dead_letter():
    assert judge_failure(ScorerFailure.UNAVAILABLE, scorer_answered=True, strikes=0, max_strikes=3) == (Step.RETRY, 1)
    assert judge_failure(ScorerFailure.UNAVAILABLE, scorer_answered=True, strikes=2, max_strikes=3) == (
        Step.DEAD_LETTER,
        3,
    )


def test_a_refusal_is_a_strike_even_when_nothing_else_answered():
    assert judge_failure(ScorerFailure.REFUSED, scorer_answered=False, strikes=0, max_strikes=2) == (Step.RETRY, 1)
    assert judge_failure(ScorerFailure.REFUSED, scorer_answered=False, strikes=1, max_strikes=2)[0] is Step.DEAD_LETTER


def test_backoff_doubles_and_is_capped():
    assert [backoff_s(n, cap_s=3) for n in range(5)] == [0.5, 1.0, 2.0, 3, 3]
    assert backoff_s(10_000) == 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(calls: list[CallResult], probes: list[bool], max_strikes: int = 3):
    """Drives score_until_judged with scripted call and probe results; returns (result, sleeps, probes used)."""
    clock, sleeps, probe_results, call_results = FakeClock(), [], list(probes), list(calls)

    async def probe() -> bool:
        return probe_results.pop(0)

    async def call() -> CallResult:
        clock.now += 1
        return call_results.pop(0)

    async def sleep(delay: float) -> None:
        sleeps.append(delay)
        clock.now += delay

    health = ScorerHealth(probe, clock)
    result = asyncio.run(score_until_judged(call, health, max_strikes=max_strikes, max_backoff_s=10, sleep=sleep))
    return result, sleeps, len(probes) - len(probe_results)


def test_an_outage_is_waited_out_however_long_then_scored():
    result, sleeps, probes = run([DOWN] * 8 + [CallResult(score=SCORE)], probes=[False] * 8)
    assert result == SCORE
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 10, 10, 10]  # backoff, capped; never given up
    assert probes == 8


def test_a_record_failing_while_the_probe_scores_is_dead_lettered_after_its_strikes():
    result, sleeps, _ = run([HTTP_500] * 3, probes=[True] * 3)
    assert isinstance(result, Unscorable)
    assert "3 failures" in result.reason and "HTTP 500" in result.reason
    assert len(sleeps) == 2


def test_a_refused_record_is_dead_lettered_without_probing():
    result, _, probes = run([REFUSED] * 3, probes=[])
    assert isinstance(result, Unscorable) and "HTTP 400" in result.reason
    assert probes == 0


def test_outage_failures_do_not_count_as_strikes():
    # Down twice (probe fails: outage), then this record fails while the scorer is up, then it scores.
    result, _, _ = run([DOWN, DOWN, HTTP_500, HTTP_500, CallResult(score=SCORE)], probes=[False, False, True, True])
    assert result == SCORE


def test_another_records_success_spares_a_probe():
    async def never_called() -> bool:
        raise AssertionError("no probe needed")

    clock = FakeClock()
    health = ScorerHealth(never_called, clock)
    clock.now = 5
    health.answered()
    assert asyncio.run(health.answered_since(4)) is True
