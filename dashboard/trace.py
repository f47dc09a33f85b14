"""A question's trace, without Kafka: which partition holds it, what each record says, in what order.

Every message is keyed by its question_id (common/kafka.py: `message_key`), and every producer
partitions keys as Java does (common/partitioner.py; the Flink job's sink is Java). So one partition
of each topic holds all of a question's records, and a trace reads only that one.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from common import topics
from common.messages import DeadLetter, PipelineMessage

# common.messages.question_id_for: the first 32 hex digits of a sha256.
QUESTION_ID = re.compile(r"[0-9a-f]{32}")

# Which step of a question's life a topic is: the tie-break when two records carry the same time.
STEP_OF_TOPIC = {
    topics.QUESTIONS_PENDING: 0,
    topics.LLM_REQUESTS: 1,
    topics.LLM_RESPONSES_SUCCESS: 2,
    topics.LLM_RESPONSES_ERROR: 2,
    topics.ERRORS_OVERLOAD: 2,
    topics.ERRORS_QUOTA: 2,
    topics.VALIDATED_RESPONSES: 3,
    topics.LOW_QUALITY_RESPONSES: 3,
    topics.DEAD_LETTER: 4,
}


def valid_question_id(text: str) -> bool:
    return QUESTION_ID.fullmatch(text) is not None


@dataclass(frozen=True)
class Record:
    """One record read from Kafka (the key already matched)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes | None


@dataclass
class TraceEvent:
    topic: str
    partition: int
    offset: int
    # The record's time: the later of the broker timestamp and the message's own updated_at (see
    # event_time); kafka_time is the broker's alone.
    time: datetime
    kafka_time: datetime
    status: str
    run: int | None = None
    attempt: int | None = None
    retry_count: int | None = None
    score: float | None = None
    detail: str = ""
    since_previous_s: float | None = None
    since_first_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """For JSON: times as ISO 8601 with milliseconds, in UTC."""
        data = asdict(self)
        for name in ("time", "kafka_time"):
            data[name] = data[name].astimezone(UTC).isoformat(timespec="milliseconds")
        return data


def from_ms(timestamp_ms: int) -> datetime:
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC)


def event_time(kafka_time: datetime, own_time: datetime | None) -> datetime:
    """Both clocks can only be early: Flink's Kafka sink stamps its output with the input record's
    timestamp (so a validated answer would seem to arrive with the LLM's answer), and a message passed
    on without a change keeps its updated_at. The later of the two is the closer."""
    if own_time is None:
        return kafka_time
    return max(kafka_time, own_time if own_time.tzinfo else own_time.replace(tzinfo=UTC))


def status_of(topic: str) -> str:
    return str(topics.TERMINAL_STATUS_BY_TOPIC.get(topic, topics.Status.PENDING))


def describe(topic: str, message: PipelineMessage) -> tuple[str, float | None]:
    """A few words on what the record means, and the F1 that decided it (where a score did)."""
    score = message.score.f1 if message.score else None
    if topic in (topics.VALIDATED_RESPONSES, topics.LOW_QUALITY_RESPONSES):
        return f"scored F1 {score:.3f}" if score is not None else "scored", score
    if topic == topics.QUESTIONS_PENDING:
        if message.retry_count:
            return f"retry {message.retry_count} of attempt {message.attempt}", None
        if message.attempt > 1 and score is not None:
            return f"regenerate: attempt {message.attempt - 1} scored F1 {score:.3f}", score
        return (f"asked again (run {message.run})" if message.run > 1 else "asked"), None
    if topic == topics.LLM_REQUESTS:
        return "LLM request", None
    if topic == topics.LLM_RESPONSES_SUCCESS:
        latency = f" in {message.llm_latency_ms / 1000:.2f} s" if message.llm_latency_ms is not None else ""
        return f"LLM answered{latency}", None
    error = message.error
    if error is not None:
        status = f" (HTTP {error.status})" if error.status else ""
        return f"LLM {error.kind}{status}", None
    return "", None


def event_of(record: Record) -> TraceEvent:
    """What one record of the question says; bytes that do not decode are still an event."""
    kafka_time = from_ms(record.timestamp_ms)
    event = TraceEvent(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        time=kafka_time,
        kafka_time=kafka_time,
        status=status_of(record.topic),
    )
    try:
        if record.topic == topics.DEAD_LETTER:
            letter = DeadLetter.from_bytes(record.value)
            event.time = event_time(kafka_time, letter.failed_at)
            event.run, event.detail = letter.run, f"{letter.stage}: {letter.reason[:200]}"
            return event
        message = PipelineMessage.from_bytes(record.value)
    except ValueError as exc:  # MessageError, pydantic's ValidationError: shown, never a failed trace
        event.detail = f"undecodable: {str(exc)[:200]}"
        return event
    event.time = event_time(kafka_time, message.updated_at)
    event.run, event.attempt, event.retry_count = message.run, message.attempt, message.retry_count
    event.detail, event.score = describe(record.topic, message)
    return event


def in_order(events: list[TraceEvent]) -> list[TraceEvent]:
    """Events by time (then run, attempt, retry and pipeline step for equal times), with the time
    from the first event and from the one before."""
    ordered = sorted(
        events,
        key=lambda e: (
            e.time,
            e.run or 0,
            e.attempt or 0,
            e.retry_count or 0,
            STEP_OF_TOPIC.get(e.topic, len(STEP_OF_TOPIC)),
            e.offset,
        ),
    )
    for previous, event in zip([None, *ordered], ordered, strict=False):
        event.since_first_s = round((event.time - ordered[0].time).total_seconds(), 3)
        event.since_previous_s = None if previous is None else round((event.time - previous.time).total_seconds(), 3)
    return ordered
