"""The pipeline study, from what the stack recorded for the run's questions (their current run):
PostgreSQL (questions, attempts, llm_calls) and the Kafka topics' message timestamps."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from psycopg.rows import dict_row

from common import topics
from common.topics import TERMINAL_STATUSES, Status
from experiments.stats import (
    RETRY_TOPICS,
    Event,
    percentile,
    regeneration_pairs,
    summary_of,
    threshold_sweep,
    thresholds,
    topic_waits,
    written_at,
)

log = logging.getLogger(__name__)
TERMINAL = {s.value for s in TERMINAL_STATUSES}


@dataclass
class Recorded:
    questions: dict[str, dict[str, Any]]  # question_id -> row of `questions`
    scores: dict[str, list[tuple[int, float]]]  # (attempt, f1) of the current run
    calls: dict[str, list[tuple[int, int]]]  # (attempt, retry_count) of the current run's LLM calls
    events: list[Event] = field(default_factory=list)
    kafka_complete: bool = True  # every partition was read to its end before the deadline


def read_database(database_url: str, question_ids: list[str]) -> Recorded:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT question_id, status, runs, attempts, created_at, updated_at, completed_at"
            " FROM questions WHERE question_id = ANY(%s)",
            (question_ids,),
        ).fetchall()
        attempts = conn.execute(
            "SELECT a.question_id, a.attempt, a.f1 FROM attempts a JOIN questions q"
            " ON q.question_id = a.question_id AND q.runs = a.run WHERE a.question_id = ANY(%s)",
            (question_ids,),
        ).fetchall()
        calls = conn.execute(
            "SELECT c.question_id, c.attempt, c.retry_count FROM llm_calls c JOIN questions q"
            " ON q.question_id = c.question_id AND q.runs = c.run WHERE c.question_id = ANY(%s)",
            (question_ids,),
        ).fetchall()
    scores: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in attempts:
        scores[row["question_id"]].append((row["attempt"], row["f1"]))
    by_call: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for row in calls:
        by_call[row["question_id"]].append((row["attempt"], row["retry_count"]))
    return Recorded({r["question_id"]: r for r in rows}, dict(scores), dict(by_call))


@dataclass(frozen=True)
class Fields:
    """What the study reads of a pipeline message or dead-letter envelope (None when absent)."""

    run: int | None = None
    attempt: int | None = None
    retry_count: int | None = None
    updated_s: float | None = None


def fields_of(value: bytes | None) -> Fields:
    try:
        data = json.loads(value or b"")
    except ValueError:
        return Fields()
    if not isinstance(data, dict):
        return Fields()
    stamp = data.get("updated_at") or data.get("failed_at")
    try:
        updated_s = datetime.fromisoformat(stamp).timestamp() if isinstance(stamp, str) else None
    except ValueError:
        updated_s = None
    return Fields(data.get("run"), data.get("attempt"), data.get("retry_count"), updated_s)


def read_events(bootstrap: str, runs: dict[str, int], timeout_s: float = 60.0) -> tuple[list[Event], bool]:
    """Every message of the given questions' current runs on every topic, read from the beginning up
    to the end offsets seen at the start, under a throwaway group (nothing committed)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"experiments-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    events: list[Event] = []
    try:
        metadata = consumer.list_topics(timeout=10)
        remaining: dict[tuple[str, int], int] = {}
        assignment = []
        for topic in topics.ALL_TOPICS:
            for partition in metadata.topics.get(topic).partitions if topic in metadata.topics else {}:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                if high > low:
                    remaining[(topic, partition)] = high
                    assignment.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
        consumer.assign(assignment)
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            topic, partition, offset = str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)
            if offset >= remaining.get((topic, partition), 0) - 1:
                remaining.pop((topic, partition), None)
            key = (msg.key() or b"").decode("utf-8", "replace")
            if key not in runs:
                continue
            fields = fields_of(msg.value())
            if fields.run is not None and fields.run != runs[key]:
                continue
            at_s = written_at(msg.timestamp()[1] / 1000, fields.updated_s)
            events.append(Event(topic, key, runs[key], at_s, fields.attempt, fields.retry_count))
        return events, not remaining
    finally:
        consumer.close()


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


@dataclass
class PipelineResult:
    rows: list[dict[str, Any]]  # pipeline.csv
    summary: dict[str, Any]
    waits: dict[str, dict[str, Any]]
    sweep: list[tuple[float, float, bool]]
    regeneration: list[tuple[str, float, float]]


def analyse(recorded: Recorded, quality_threshold: float, max_attempts: int) -> PipelineResult:
    first_pending: dict[str, float] = {}
    retried_by_topic: set[str] = set()
    for event in recorded.events:
        if event.topic == topics.QUESTIONS_PENDING:
            first_pending[event.question_id] = min(event.at_s, first_pending.get(event.question_id, event.at_s))
        if event.topic in RETRY_TOPICS:
            retried_by_topic.add(event.question_id)
    terminal = {qid: row for qid, row in recorded.questions.items() if row["status"] in TERMINAL}
    applied_at = {qid: t for qid, row in terminal.items() if (t := _epoch(row["completed_at"])) is not None}
    rows, e2e = [], []
    for qid, row in sorted(recorded.questions.items()):
        scores = [f1 for _, f1 in sorted(recorded.scores.get(qid, []))]
        calls = recorded.calls.get(qid, [])
        retry_calls = sum(1 for _, retry in calls if retry > 0)
        retried = retry_calls > 0 or qid in retried_by_topic
        # POST -> terminal: from the run's first questions-pending message (storage publishes it
        # inside POST /query); without it (topic retention), from created_at for a first run.
        start = first_pending.get(qid) or (_epoch(row["created_at"]) if row["runs"] == 1 else None)
        end = applied_at.get(qid)
        seconds = end - start if start is not None and end is not None else None
        if seconds is not None:
            e2e.append(seconds)
        rows.append(
            {
                "question_id": qid,
                "status": row["status"],
                "run": row["runs"],
                "attempts": len(scores),
                "f1_scores": ";".join(f"{s:.4f}" for s in scores),
                "first_f1": scores[0] if scores else None,
                "best_f1": max(scores) if scores else None,
                "llm_calls": len(calls),
                "retry_calls": retry_calls,
                "retried": retried,
                "recovered_by_retry": retried and row["status"] == Status.VALIDATED,
                "post_to_terminal_s": seconds,
            }
        )
    counted = [r for r in rows if r["status"] in TERMINAL]
    sweep = threshold_sweep(
        {r["question_id"]: [f1 for _, f1 in sorted(recorded.scores.get(r["question_id"], []))] for r in counted},
        len(counted),
        thresholds(),
        max_attempts,
        quality_threshold,
    )
    waits = {topic: summary_of(values) for topic, values in sorted(topic_waits(recorded.events, applied_at).items())}
    regeneration = regeneration_pairs({qid: recorded.scores[qid] for qid in terminal if qid in recorded.scores})
    with_calls = [r["llm_calls"] for r in counted if r["llm_calls"]]
    statuses = {s.value: sum(1 for r in rows if r["status"] == s.value) for s in Status}
    spans = [(first_pending.get(q) or _epoch(terminal[q]["created_at"]), applied_at[q]) for q in applied_at]
    window = max(e for _, e in spans) - min(s for s, _ in spans if s is not None) if spans else 0.0
    summary = {
        "questions": len(rows),
        "terminal": len(counted),
        "statuses": statuses,
        "validated_share": statuses[Status.VALIDATED.value] / len(counted) if counted else None,
        "quality_threshold": quality_threshold,
        "max_attempts": max_attempts,
        "post_to_terminal_s": {"n": len(e2e), "p50": percentile(e2e, 50), "p95": percentile(e2e, 95)},
        "terminal_per_min": len(applied_at) / window * 60 if window > 0 else None,
        "retried": sum(r["retried"] for r in rows),
        "recovered_by_retries": sum(r["recovered_by_retry"] for r in rows),
        "regenerated": len(regeneration),
        "regenerated_validated": sum(1 for qid, _, _ in regeneration if terminal[qid]["status"] == Status.VALIDATED),
        "mean_first_f1_regenerated": sum(f for _, f, _ in regeneration) / len(regeneration) if regeneration else None,
        "mean_best_f1_regenerated": sum(b for _, _, b in regeneration) / len(regeneration) if regeneration else None,
        "llm_calls": sum(r["llm_calls"] for r in counted),
        "llm_calls_per_question": sum(with_calls) / len(with_calls) if with_calls else None,
        "extra_llm_calls_per_question": sum(c - 1 for c in with_calls) / len(with_calls) if with_calls else None,
        "regeneration_calls": sum(
            1 for q in counted for a, r in recorded.calls.get(q["question_id"], []) if a > 1 and r == 0
        ),
        "retry_calls": sum(r["retry_calls"] for r in counted),
        "kafka_messages": len(recorded.events),
        "kafka_complete": recorded.kafka_complete,
    }
    return PipelineResult(rows, summary, waits, sweep, regeneration)


def study(
    database_url: str, bootstrap: str, question_ids: list[str], quality_threshold: float, max_attempts: int
) -> PipelineResult:
    recorded = read_database(database_url, question_ids)
    runs = {qid: row["runs"] for qid, row in recorded.questions.items()}
    recorded.events, recorded.kafka_complete = read_events(bootstrap, runs)
    if not recorded.kafka_complete:
        log.warning("Kafka was not read to its end before the deadline: waits per topic are partial")
    return analyse(recorded, quality_threshold, max_attempts)
