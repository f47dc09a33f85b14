"""The operator commands' decisions (python -m common replay-dead-letter / rerun), without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from common import topics
from common.__main__ import main
from common.kafka import DeliveryError
from common.messages import DeadLetter, PipelineMessage
from common.operations import (
    Candidate,
    QuestionRow,
    Replayer,
    ReplayFilter,
    ReplayReport,
    StoredQuestion,
    parse_candidate,
    parse_since,
    question_allows_replay,
    rerun_outcome,
)
from common.topics import Status
from tests.fakes import FakeProducer

MESSAGE = PipelineMessage.new("What is the capital of Chile?", "Santiago").evolve(run=2)


def letter_of(raw: bytes, source_topic: str = topics.QUESTIONS_PENDING, **kwargs) -> bytes:
    return DeadLetter.wrap(raw, stage="llm-consumer", reason="boom", source_topic=source_topic, **kwargs).to_bytes()


def test_a_dead_letter_whose_original_parses_is_a_candidate():
    candidate = parse_candidate(letter_of(MESSAGE.to_bytes()), ReplayFilter())
    assert isinstance(candidate, Candidate)
    assert candidate.message.question_id == MESSAGE.question_id and candidate.message.run == 2
    assert candidate.letter.source_topic == topics.QUESTIONS_PENDING


def test_what_is_skipped_and_why():
    assert parse_candidate(b"not json", ReplayFilter()).startswith("not a dead-letter envelope")
    assert parse_candidate(letter_of(b"garbage"), ReplayFilter()).startswith("original message does not parse")
    assert "no pipeline consumer" in parse_candidate(letter_of(MESSAGE.to_bytes(), topics.LLM_REQUESTS), ReplayFilter())
    big = MESSAGE.evolve(llm_answer="x" * 70_000).to_bytes()
    assert parse_candidate(letter_of(big), ReplayFilter()) == "original message was truncated in the envelope"
    assert parse_candidate(letter_of(MESSAGE.to_bytes()), ReplayFilter(question_id="other")).startswith("filtered")
    later = datetime.now(UTC) + timedelta(hours=1)
    assert parse_candidate(letter_of(MESSAGE.to_bytes()), ReplayFilter(since=later)).startswith("filtered")


def test_only_a_question_this_runs_dead_letter_ended_is_replayed():
    ended = QuestionRow(Status.FAILED, 2, "dead_letter")
    assert question_allows_replay(ended, MESSAGE) is None
    assert question_allows_replay(None, MESSAGE) == "unknown question"
    assert "run 3" in question_allows_replay(QuestionRow(Status.FAILED, 3, "dead_letter"), MESSAGE)
    assert "still pending" in question_allows_replay(QuestionRow(Status.PENDING, 2, None), MESSAGE)
    assert "validated" in question_allows_replay(QuestionRow(Status.VALIDATED, 2, None), MESSAGE)
    assert "failed" in question_allows_replay(QuestionRow(Status.FAILED, 2, "error"), MESSAGE)


def test_the_report_lists_replays_and_counts_skips_by_reason():
    report = ReplayReport(replayed=["q1 run 1 attempt 1 -> questions-pending"])
    report.skipped.update(["unknown question", "unknown question", "filtered: another question"])
    lines = report.lines(dry_run=True)
    assert lines[0] == "would replay 1 message(s)"
    assert "skipped 3 dead letter(s)" in lines
    assert any(line.strip().startswith("2  unknown question") for line in lines)


def test_since_without_a_zone_is_utc():
    assert parse_since("2026-01-01T10:00:00") == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert parse_since("2026-01-01T10:00:00+02:00").utcoffset() == timedelta(hours=2)


def stored(status: Status, run: int) -> StoredQuestion:
    return StoredQuestion("q1", "text", "ref", status, run, datetime(2026, 1, 1, tzinfo=UTC))


def test_rerun_outcome_tells_a_new_run_from_nothing_done():
    assert rerun_outcome(stored(Status.FAILED, 1), stored(Status.PENDING, 2), 202, {}) == (
        True,
        "started run 2 of q1 (it was failed in run 1)",
    )
    started, text = rerun_outcome(stored(Status.PENDING, 1), stored(Status.PENDING, 1), 202, {})
    assert not started and "PENDING_TIMEOUT_S" in text
    assert rerun_outcome(stored(Status.VALIDATED, 1), stored(Status.VALIDATED, 1), 200, {})[0] is False
    started, text = rerun_outcome(
        stored(Status.FAILED, 1), stored(Status.FAILED, 1), 503, {"error": "queue_unavailable", "message": "down"}
    )
    assert not started and "HTTP 503 queue_unavailable" in text


def test_the_cli_keeps_init_topics_and_checks_its_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["replay-dead-letter", "--since", "yesterday"])
    assert "--since" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rerun"])  # the question id is required
    with pytest.raises(SystemExit):
        main(["nope"])


class FakeStore:
    def __init__(self, row: QuestionRow | None) -> None:
        self._row, self.reopened = row, 0

    def row(self, question_id: str) -> QuestionRow | None:
        return self._row

    def reopen_and(self, message: PipelineMessage, publish) -> bool:
        publish()  # as the real store: a publish that raises leaves the question failed
        self.reopened += 1
        self._row = QuestionRow(Status.PENDING, message.run, None)
        return True


def test_a_replay_reopens_and_republishes_once_per_question_run():
    store, producer = FakeStore(QuestionRow(Status.FAILED, 2, "dead_letter")), FakeProducer()
    replayer = Replayer(store, producer, ReplayFilter())  # type: ignore[arg-type]
    letter = letter_of(MESSAGE.to_bytes(), topics.LLM_RESPONSES_SUCCESS)
    replayer.offer(letter)
    replayer.offer(letter)  # the same message dead-lettered twice
    [(topic, sent)] = producer.sent
    assert topic == topics.LLM_RESPONSES_SUCCESS and sent.question_id == MESSAGE.question_id and sent.run == 2
    assert store.reopened == 1 and len(replayer.report.replayed) == 1
    assert sum(replayer.report.skipped.values()) == 1


def test_a_dry_run_changes_nothing():
    store = FakeStore(QuestionRow(Status.FAILED, 2, "dead_letter"))
    replayer = Replayer(store, None, ReplayFilter())  # type: ignore[arg-type]
    replayer.offer(letter_of(MESSAGE.to_bytes()))
    assert store.reopened == 0 and len(replayer.report.replayed) == 1


def test_kafka_refusing_the_publish_leaves_the_question_failed():
    store = FakeStore(QuestionRow(Status.FAILED, 2, "dead_letter"))
    refusing = FakeProducer(fail_flushes=1)  # the broker never acknowledges the publish
    replayer = Replayer(store, refusing, ReplayFilter())  # type: ignore[arg-type]
    with pytest.raises(DeliveryError):
        replayer.offer(letter_of(MESSAGE.to_bytes()))
    assert store.reopened == 0 and replayer.report.replayed == []
