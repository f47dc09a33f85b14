"""storage_service's consumer handlers on fakes: what reaches the cache, what is retried, what a dead
letter asks of the repository. (The SQL itself runs against PostgreSQL in tests/e2e.)"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from common import topics
from common.kafka import TransientError
from common.messages import DeadLetter, PipelineMessage, Score, ScoreRecord
from common.topics import Status
from storage_service.consumer import dead_letter_handler, outcome_handler
from storage_service.rules import OutcomeResult


class FakeRepo:
    def __init__(self, result: OutcomeResult = OutcomeResult.APPLIED, row: dict | None = None, error=None):
        self.result, self.row, self.error = result, row, error
        self.outcomes: list[tuple[PipelineMessage, Status]] = []
        self.letters: list[tuple[DeadLetter, PipelineMessage | None]] = []

    def record_outcome(self, message: PipelineMessage, status: Status) -> OutcomeResult:
        if self.error:
            raise self.error
        self.outcomes.append((message, status))
        return self.result

    def record_dead_letter(self, letter: DeadLetter, original: PipelineMessage | None) -> OutcomeResult:
        if self.error:
            raise self.error
        self.letters.append((letter, original))
        return self.result

    def question(self, question_id: str) -> dict[str, Any] | None:
        return self.row


class FakeCache:
    def __init__(self) -> None:
        self.puts: dict[str, dict] = {}

    def put(self, question_id: str, result: dict[str, Any]) -> None:
        self.puts[question_id] = result


def validated(run: int = 1, answer: str = "Santiago.") -> PipelineMessage:
    message = PipelineMessage.new("What is the capital of Chile?", "Santiago").evolve(run=run, llm_answer=answer)
    return message.evolve(
        score=Score(precision=0.9, recall=0.9, f1=0.9, model="m"),
        score_history=[ScoreRecord(attempt=1, f1=0.9, precision=0.9, recall=0.9, llm_answer=answer)],
    )


def stored_row(message: PipelineMessage, *, status: str = "validated", runs: int = 1, answer: str = "stored") -> dict:
    return {
        "question_id": message.question_id,
        "question_text": message.question_text,
        "status": status,
        "runs": runs,
        "final_answer": answer,
        "final_score": 0.9,
        "attempts": 1,
        "model": "m",
        "completed_at": None,
    }


def test_an_applied_validated_outcome_caches_the_stored_row_not_the_message():
    message = validated(answer="from the message")
    repo, cache = FakeRepo(row=stored_row(message, answer="from the database")), FakeCache()
    assert outcome_handler(repo, cache)(message, topics.VALIDATED_RESPONSES) == []  # storage produces nothing
    assert repo.outcomes == [(message, Status.VALIDATED)]
    assert cache.puts[message.question_id]["answer"] == "from the database"


@pytest.mark.parametrize("result", [OutcomeResult.DUPLICATE, OutcomeResult.OLDER_RUN])
def test_a_duplicate_or_older_outcome_leaves_the_cache_alone(result):
    message = validated()
    repo, cache = FakeRepo(result, row=stored_row(message)), FakeCache()
    outcome_handler(repo, cache)(message, topics.VALIDATED_RESPONSES)
    assert cache.puts == {}


def test_nothing_is_cached_when_the_row_is_not_this_runs_validated_answer():
    message = validated(run=1)
    for row in (stored_row(message, runs=2), stored_row(message, status="pending"), None):
        cache = FakeCache()
        outcome_handler(FakeRepo(row=row), cache)(message, topics.VALIDATED_RESPONSES)
        assert cache.puts == {}


@pytest.mark.parametrize(
    ("topic", "status"),
    [(topics.LOW_QUALITY_RESPONSES, Status.LOW_QUALITY), (topics.LLM_RESPONSES_ERROR, Status.FAILED)],
)
def test_each_outcome_topic_stores_its_status_and_only_validated_is_cached(topic, status):
    message = validated()
    repo, cache = FakeRepo(row=stored_row(message)), FakeCache()
    outcome_handler(repo, cache)(message, topic)
    assert repo.outcomes == [(message, status)] and cache.puts == {}


@pytest.mark.parametrize("down", [psycopg.OperationalError("connection refused"), PoolTimeout("no connection")])
def test_the_database_being_down_is_transient(down):
    with pytest.raises(TransientError):
        outcome_handler(FakeRepo(error=down), FakeCache())(validated(), topics.VALIDATED_RESPONSES)
    letter = DeadLetter.wrap(b"x", stage="s", reason="r", source_topic=topics.QUESTIONS_PENDING, key=b"q")
    with pytest.raises(TransientError):
        dead_letter_handler(FakeRepo(error=down))(letter, topics.DEAD_LETTER)


def test_a_value_postgresql_refuses_is_the_messages_fault_not_an_outage():
    # not TransientError: the runner retries it a few times, then dead-letters it
    with pytest.raises(psycopg.DataError):
        outcome_handler(FakeRepo(error=psycopg.DataError("NUL")), FakeCache())(validated(), topics.VALIDATED_RESPONSES)


def test_a_dead_letter_is_handed_over_with_the_message_it_wraps():
    message = validated(run=2)
    letter = DeadLetter.wrap(
        message.to_bytes(), stage="llm-consumer", reason="r", source_topic=topics.QUESTIONS_PENDING, message=message
    )
    repo = FakeRepo()
    assert dead_letter_handler(repo)(letter, topics.DEAD_LETTER) == []
    [(given, original)] = repo.letters
    assert given is letter and original is not None and original.run == 2
    garbage = DeadLetter.wrap(b"\xff", stage="s", reason="r", source_topic=topics.QUESTIONS_PENDING, key=b"q")
    dead_letter_handler(repo)(garbage, topics.DEAD_LETTER)
    assert repo.letters[-1] == (garbage, None)
