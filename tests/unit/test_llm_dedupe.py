"""No forked chains: the LLM consumer's skip decision (common.ledger) and its handler's outputs."""

import psycopg
import pytest

from common import topics
from common.ledger import CallLedger, QuestionState, SkipReason, skip_reason
from llm_consumer.clients import Generation, LLMFailure
from llm_consumer.worker import llm_handler, mark_answered_after_delivery, result_topic
from tests.fakes import Clock, question


def state(status=None, runs=None, answered=False):
    return QuestionState(status=status, runs=runs, answered=answered)


@pytest.mark.parametrize(
    ("run", "known", "expected"),
    [
        (1, None, None),  # ledger unreachable: call anyway (fail open)
        (1, state(), None),  # no row yet (storage has not committed it): call
        (1, state("pending", 1), None),
        (1, state("pending", 1, answered=True), SkipReason.ALREADY_ANSWERED),
        (1, state("validated", 1), SkipReason.TERMINAL),
        (1, state("low_quality", 1), SkipReason.TERMINAL),
        (1, state("failed", 1), SkipReason.TERMINAL),
        (1, state("pending", 2), SkipReason.OLDER_RUN),  # asked again since
        (1, state("validated", 2), SkipReason.OLDER_RUN),
        (2, state("failed", 1), None),  # a new run whose row is not committed yet
        (2, state("pending", 2), None),
    ],
)
def test_skip_reason(run, known, expected):
    assert skip_reason(question(run=run), known) is expected


class ScriptedClient:
    url = "http://llm/api/generate"

    def __init__(self, reply):
        self.reply, self.calls = reply, 0

    def request_body(self, prompt):
        return {"prompt": prompt}

    def generate(self, body):
        self.calls += 1
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def test_a_skipped_message_never_reaches_the_llm_and_produces_nothing():
    client = ScriptedClient(Generation("Santiago", "m", 5.0))
    handle = llm_handler(client, lambda m: state("validated", 1))
    assert handle(question(), topics.QUESTIONS_PENDING) == [] and client.calls == 0


def test_an_answer_produces_the_audited_request_then_the_success():
    client = ScriptedClient(Generation("Santiago", "m", 5.0))
    [(audit, request), (topic, out)] = llm_handler(client, lambda m: state("pending", 1))(
        question(), topics.QUESTIONS_PENDING
    )
    assert audit == topics.LLM_REQUESTS and request.llm_request["url"] == client.url
    assert topic == topics.LLM_RESPONSES_SUCCESS and out.llm_answer == "Santiago" and client.calls == 1


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (LLMFailure("busy", status=503), topics.ERRORS_OVERLOAD),
        (LLMFailure("quota", status=429), topics.ERRORS_QUOTA),
        (LLMFailure("bad", status=500), topics.LLM_RESPONSES_ERROR),
    ],
)
def test_a_failed_call_goes_to_the_topic_of_its_kind(failure, expected):
    outputs = llm_handler(ScriptedClient(failure))(question(), topics.QUESTIONS_PENDING)
    assert [topic for topic, _ in outputs] == [topics.LLM_REQUESTS, expected]
    assert outputs[1][1].error.status == failure.status


class RecordingLedger:
    def __init__(self):
        self.marked = []

    def mark_answered(self, message, topic):
        self.marked.append((message.question_id, message.attempt, topic))


def test_a_step_is_marked_answered_with_its_result_topic_not_the_audit_copy():
    ledger = RecordingLedger()
    msg = question(attempt=2)
    outputs = [(topics.LLM_REQUESTS, msg), (topics.ERRORS_QUOTA, msg)]
    mark_answered_after_delivery(ledger)(msg, outputs)
    assert ledger.marked == [(msg.question_id, 2, topics.ERRORS_QUOTA)]
    assert result_topic([]) is None


def test_an_unreachable_ledger_fails_open_and_waits_before_trying_again(monkeypatch):
    attempts = []

    def refused(*args, **kwargs):
        attempts.append(1)
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(psycopg, "connect", refused)
    clock = Clock()
    ledger = CallLedger("postgresql://nowhere/db", consumer="t", retry_after_s=15, clock=clock)
    assert ledger.state(question()) is None  # unknown: the consumer calls the LLM anyway
    ledger.mark_answered(question(), topics.LLM_RESPONSES_SUCCESS)  # does not raise either
    assert len(attempts) == 1  # within retry_after_s nothing is tried: one connect timeout per outage
    clock.now += 16
    assert ledger.state(question()) is None and len(attempts) == 2
