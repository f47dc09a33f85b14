"""storage_service's decisions: which terminal outcome wins, what a dead letter ends, when a question
may be asked again, and what Flink's job list means for /health."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from common import topics
from common.flink_rest import SCORE_JOB_NAME, ScoreJobWatch
from common.messages import DeadLetter, PipelineMessage
from common.topics import Status
from storage_service.rules import (
    OutcomeResult,
    QuestionState,
    dead_letter_reason,
    dead_letter_target,
    decide_outcome,
    flink_job_state,
    may_start_new_run,
    original_message,
    storable_text,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def state(status: Status, run: int = 2, age_s: float = 0.0) -> QuestionState:
    return QuestionState(status, run, NOW - timedelta(seconds=age_s))


# --- first terminal outcome of a run wins ---------------------------------------------------------


def test_the_first_outcome_of_the_current_run_is_applied():
    assert decide_outcome(state(Status.PENDING), 2, creates_missing=True) is OutcomeResult.APPLIED


@pytest.mark.parametrize("ended", [Status.VALIDATED, Status.LOW_QUALITY, Status.FAILED])
def test_a_later_outcome_of_an_ended_run_is_a_duplicate(ended):
    assert decide_outcome(state(ended), 2, creates_missing=True) is OutcomeResult.DUPLICATE


@pytest.mark.parametrize("status", list(Status))
def test_an_outcome_of_another_run_is_ignored_whatever_the_status(status):
    assert decide_outcome(state(status, run=3), 2, creates_missing=True) is OutcomeResult.OLDER_RUN
    assert decide_outcome(state(status, run=1), 2, creates_missing=True) is OutcomeResult.OLDER_RUN


def test_an_outcome_for_a_question_the_database_lost_recreates_it_a_dead_letter_does_not():
    assert decide_outcome(None, 1, creates_missing=True) is OutcomeResult.APPLIED
    assert decide_outcome(None, 1, creates_missing=False) is OutcomeResult.UNKNOWN_QUESTION


def test_an_unknown_run_means_the_current_one():
    assert decide_outcome(state(Status.PENDING), None, creates_missing=False) is OutcomeResult.APPLIED
    assert decide_outcome(state(Status.VALIDATED), None, creates_missing=False) is OutcomeResult.DUPLICATE


# --- asking again ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ended", [Status.FAILED, Status.LOW_QUALITY])
def test_failed_and_low_quality_questions_start_a_new_run_at_once(ended):
    assert may_start_new_run(state(ended, age_s=0), NOW, 900)


def test_a_validated_question_never_starts_a_new_run():
    assert not may_start_new_run(state(Status.VALIDATED, age_s=10**6), NOW, 900)


def test_a_pending_question_starts_a_new_run_only_once_stale():
    assert not may_start_new_run(state(Status.PENDING, age_s=899), NOW, 900)
    assert may_start_new_run(state(Status.PENDING, age_s=900), NOW, 900)
    assert may_start_new_run(state(Status.PENDING, age_s=5), NOW, 1)


# --- dead letters ----------------------------------------------------------------------------------


def pipeline_message(run: int = 3) -> PipelineMessage:
    return PipelineMessage.new("What is the capital of Chile?", "Santiago").evolve(run=run, attempt=2)


def test_a_dead_letter_names_its_question_and_run_from_the_wrapped_message():
    message = pipeline_message(run=3)
    letter = DeadLetter.wrap(
        message.to_bytes(), stage="llm-consumer", reason="boom", source_topic=topics.QUESTIONS_PENDING, key=b"other"
    )
    original = original_message(letter)
    assert original is not None and original.attempt == 2
    # the key is what wrap knew; the run comes from the message inside
    assert dead_letter_target(letter, original) == ("other", 3)
    wrapped = DeadLetter.wrap(
        message.to_bytes(), stage="s", reason="r", source_topic=topics.QUESTIONS_PENDING, message=message
    )
    assert dead_letter_target(wrapped, original_message(wrapped)) == (message.question_id, 3)


def test_garbage_keeps_the_key_as_question_and_leaves_the_run_to_the_current_one():
    letter = DeadLetter.wrap(
        b"{[[[", stage="s", reason="unparseable", source_topic=topics.VALIDATED_RESPONSES, key=b"q1"
    )
    assert original_message(letter) is None
    assert dead_letter_target(letter, None) == ("q1", None)


def test_a_dead_letter_without_a_storable_question_id_names_no_question():
    letter = DeadLetter.wrap(b"x", stage="s", reason="r", source_topic=topics.VALIDATED_RESPONSES, key=b"q\x00")
    assert dead_letter_target(letter, None) == (None, None)
    nothing = DeadLetter.wrap(b"x", stage="s", reason="r", source_topic=topics.VALIDATED_RESPONSES)
    assert dead_letter_target(nothing, None) == (None, None)


def test_a_truncated_original_is_not_parsed():
    big = pipeline_message().evolve(llm_answer="x" * 70_000).to_bytes()
    letter = DeadLetter.wrap(big, stage="s", reason="r", source_topic=topics.LLM_RESPONSES_SUCCESS)
    assert letter.raw_truncated and original_message(letter) is None


def test_the_reason_says_who_gave_up_and_can_always_be_stored():
    letter = DeadLetter.wrap(
        b"x", stage="storage-consumer", reason="value has a \x00 inside", source_topic=topics.VALIDATED_RESPONSES
    )
    reason = dead_letter_reason(letter)
    assert reason == "dead-lettered by storage-consumer from validated-responses: value has a \\x00 inside"
    assert storable_text("lone \ud800") == "lone \\ud800"
    assert storable_text("¿Cuál? é") == "¿Cuál? é"


# --- the Flink job ---------------------------------------------------------------------------------


def job(state: str, name: str = SCORE_JOB_NAME, start: int = 0) -> dict:
    return {"jid": f"j{start}", "name": name, "state": state, "start-time": start}


def test_flink_job_state_running_failed_or_missing():
    assert flink_job_state([job("FAILED", start=1), job("RUNNING", start=2)]) == (True, "RUNNING")
    assert flink_job_state([job("CANCELED", start=1), job("FAILED", start=5)]) == (False, "FAILED")
    assert flink_job_state([job("RUNNING", name="another job")]) == (False, "missing")
    assert flink_job_state([]) == (False, "missing")


def test_the_flink_answer_is_reused_for_a_few_seconds_and_unreachable_is_not_running():
    now = [0.0]
    answers: list = [[job("RUNNING")], OSError("connection refused")]

    def fetch():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    check = ScoreJobWatch("http://flink", timeout_s=1, ttl_s=5, read=flink_job_state, fetch=fetch, clock=lambda: now[0])
    assert check.status().running
    now[0] = 4.9
    assert check.status().running and len(answers) == 1  # cached: not asked again
    now[0] = 5.0
    down = check.status()
    assert not down.running and down.state.startswith("unreachable: connection refused")
