"""Operator commands (`python -m common ...`): replay dead letters, re-run a question.

Both act on a running stack through its public pieces: the `dead-letter` topic, PostgreSQL's
`questions` table (owned by storage_service; read here, and written only to reopen a question
that a dead letter ended) and storage_service's `POST /query`.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import psycopg
from confluent_kafka import Consumer, TopicPartition

from common import topics
from common.kafka import ConfirmedProducer, DeliveryError
from common.messages import DeadLetter, MessageError, PipelineMessage
from common.topics import Status

# Topics a pipeline consumer reads: a message replayed anywhere else would go nowhere.
REPLAYABLE_TOPICS = frozenset(
    {
        topics.QUESTIONS_PENDING,
        topics.LLM_RESPONSES_SUCCESS,
        topics.LLM_RESPONSES_ERROR,
        topics.ERRORS_OVERLOAD,
        topics.ERRORS_QUOTA,
        topics.VALIDATED_RESPONSES,
        topics.LOW_QUALITY_RESPONSES,
    }
)
DEAD_LETTER_ERROR_KIND = "dead_letter"  # questions.error_kind of a question a dead letter ended


class Progress:
    """One line on stderr every few seconds, so a long read shows it is moving."""

    def __init__(self, out: TextIO = sys.stderr, every_s: float = 2.0) -> None:
        self.out, self.every_s, self._last = out, every_s, 0.0

    def report(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every_s:
            print(text, file=self.out, flush=True)
            self._last = now


# ---- replay-dead-letter -------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayFilter:
    question_id: str | None = None
    since: datetime | None = None


@dataclass(frozen=True)
class QuestionRow:
    """What the replay needs of a `questions` row."""

    status: Status
    run: int
    error_kind: str | None


@dataclass(frozen=True)
class Candidate:
    """A dead letter whose original message can be replayed, if its question allows it."""

    letter: DeadLetter
    message: PipelineMessage


def parse_candidate(raw: bytes | None, wanted: ReplayFilter) -> Candidate | str:
    """The dead letter's original message to replay, or why not (a skip reason; None-free text)."""
    try:
        letter = DeadLetter.from_bytes(raw)
    except MessageError as exc:
        return f"not a dead-letter envelope: {str(exc)[:120]}"
    if wanted.since is not None and letter.failed_at < wanted.since:
        return "filtered: dead-lettered before --since"
    if letter.source_topic not in REPLAYABLE_TOPICS:
        return f"source topic {letter.source_topic!r} has no pipeline consumer"
    if letter.raw_truncated:
        return "original message was truncated in the envelope"
    try:
        message = PipelineMessage.from_bytes(letter.raw())
    except MessageError as exc:
        return f"original message does not parse: {str(exc)[:120]}"
    if wanted.question_id is not None and message.question_id != wanted.question_id:
        return "filtered: another question"
    return Candidate(letter, message)


def question_allows_replay(row: QuestionRow | None, message: PipelineMessage) -> str | None:
    """None when the message may be replayed, else why not.

    Only a question that this very dead letter's run ended (failed with error_kind dead_letter) is
    reopened and replayed: a pending one may still have a live chain (a replay would fork it), an
    ended one would only count the replay's outcome as a duplicate, and a newer run ignores it.
    """
    if row is None:
        return "unknown question"
    if row.run != message.run:
        return f"question is in run {row.run}, the message in run {message.run}"
    if row.status is Status.PENDING:
        return "question still pending (its chain may be alive; `rerun` it once stale)"
    if row.status is not Status.FAILED or row.error_kind != DEAD_LETTER_ERROR_KIND:
        return f"question already ended {row.status.value} (not by a dead letter)"
    return None


def read_topic_to_end(
    bootstrap_servers: str, topic: str, progress: Progress, idle_timeout_s: float = 30.0
) -> Iterator[bytes | None]:
    """Every record value of `topic` from the start up to the end offsets seen when called: bounded
    even while others keep writing. Outside any group's committed offsets (a throwaway group id).
    TimeoutError when the broker stops answering before the end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"replay-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=15).topics[topic]
        ends: dict[int, int] = {}
        starts = []
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
            if high > low:
                ends[partition] = high
                starts.append(TopicPartition(topic, partition, low))
        total = sum(ends[tp.partition] - tp.offset for tp in starts)
        progress.report(f"reading {total} records of {topic} ({len(ends)} partitions)", force=True)
        if not starts:
            return
        consumer.assign(starts)
        read, last_seen = 0, time.monotonic()
        while ends:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                # Offsets a reader never sees (transaction markers) still move the position.
                for tp in consumer.position([TopicPartition(topic, partition) for partition in ends]):
                    if tp.offset >= ends[tp.partition]:
                        del ends[tp.partition]
                if ends and time.monotonic() - last_seen > idle_timeout_s:
                    raise TimeoutError(f"nothing read for {idle_timeout_s:.0f}s, {read}/{total} records read")
                continue
            last_seen = time.monotonic()
            partition, offset = msg.partition(), msg.offset()
            if partition not in ends or offset is None or offset >= ends[partition]:
                continue  # written after the start: not ours to replay
            read += 1
            yield msg.value()
            if offset + 1 >= ends[partition]:
                del ends[partition]
            progress.report(f"read {read}/{total}")
    finally:
        consumer.close()


@dataclass
class ReplayReport:
    replayed: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    stopped: str | None = None  # why the replay ended before the last dead letter

    def lines(self, dry_run: bool) -> list[str]:
        verb = "would replay" if dry_run else "replayed"
        out = [f"{verb} {len(self.replayed)} message(s)"] + [f"  {line}" for line in self.replayed]
        out.append(f"skipped {sum(self.skipped.values())} dead letter(s)")
        out += [f"  {count:6d}  {reason}" for reason, count in self.skipped.most_common()]
        if self.stopped:
            out.append(f"stopped early: {self.stopped}")
        return out


class QuestionStore:
    """The two things the replay asks of the `questions` table."""

    def __init__(self, database_url: str) -> None:
        self.conn = psycopg.connect(database_url, connect_timeout=5, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def row(self, question_id: str) -> QuestionRow | None:
        found = self.conn.execute(
            "SELECT status, runs, error_kind FROM questions WHERE question_id = %s", (question_id,)
        ).fetchone()
        return QuestionRow(Status(found[0]), found[1], found[2]) if found else None

    def reopen_and(self, message: PipelineMessage, publish: Callable[[], None]) -> bool:
        """Set the question back to pending (same run), then publish; if the publish fails, the
        question is failed again as it was. False when another replay got there first.

        The reopening is committed before the publish on purpose: llm_consumer's call ledger reads
        the question's status when the message arrives (often within milliseconds of the broker's
        acknowledgement), and a question still `failed` then is skipped as over. A replayer that
        dies between the two leaves the question pending with nothing on its way; `rerun` asks it
        again once it is stale (PENDING_TIMEOUT_S).
        """
        with self.conn.transaction():
            before = self.conn.execute(
                "SELECT error_message, completed_at FROM questions "
                "WHERE question_id = %s AND runs = %s AND status = 'failed' AND error_kind = %s FOR UPDATE",
                (message.question_id, message.run, DEAD_LETTER_ERROR_KIND),
            ).fetchone()
            if before is not None:
                self.conn.execute(
                    "UPDATE questions SET status = 'pending', error_kind = NULL, error_message = NULL, "
                    "completed_at = NULL, updated_at = now() WHERE question_id = %s",
                    (message.question_id,),
                )
        if before is None:
            return False
        try:
            publish()
        except BaseException:
            self.conn.execute(
                """
                UPDATE questions SET status = 'failed', error_kind = %s, error_message = %s,
                    completed_at = %s, updated_at = now()
                WHERE question_id = %s AND runs = %s AND status = 'pending'
                """,
                (DEAD_LETTER_ERROR_KIND, before[0], before[1], message.question_id, message.run),
            )
            raise
        return True


class Replayer:
    """Replays dead letters one by one into a report; a publish failure stops it (Kafka is away)."""

    def __init__(self, store: QuestionStore, producer: ConfirmedProducer | None, wanted: ReplayFilter) -> None:
        self.store, self.producer, self.wanted = store, producer, wanted  # no producer: a dry run
        self.report = ReplayReport()
        self.seen: set[tuple[str, int]] = set()  # one replay per question run, however many letters

    def offer(self, raw: bytes | None) -> None:
        candidate = parse_candidate(raw, self.wanted)
        if isinstance(candidate, str):
            self.report.skipped[candidate] += 1
            return
        message, letter = candidate.message, candidate.letter
        if (message.question_id, message.run) in self.seen:
            self.report.skipped["another dead letter of the same question run was replayed"] += 1
            return
        why_not = question_allows_replay(self.store.row(message.question_id), message)
        if why_not is not None:
            self.report.skipped[why_not] += 1
            return
        where = f"{message.question_id} run {message.run} attempt {message.attempt} -> {letter.source_topic}"
        if self.producer is not None and not self.store.reopen_and(message, self._publisher(letter, message)):
            self.report.skipped["question changed while replaying"] += 1
            return
        self.seen.add((message.question_id, message.run))
        self.report.replayed.append(f"{where} (dead-lettered by {letter.stage}: {letter.reason[:80]})")

    def _publisher(self, letter: DeadLetter, message: PipelineMessage) -> Callable[[], None]:
        producer = self.producer
        assert producer is not None
        return lambda: producer.send_and_wait(letter.source_topic, message)


def replay_dead_letters(
    *,
    bootstrap_servers: str,
    database_url: str,
    wanted: ReplayFilter,
    dry_run: bool,
    progress: Progress,
) -> ReplayReport:
    store = QuestionStore(database_url)
    producer = None if dry_run else ConfirmedProducer(bootstrap_servers, "replay-dead-letter")
    replayer = Replayer(store, producer, wanted)
    try:
        for raw in read_topic_to_end(bootstrap_servers, topics.DEAD_LETTER, progress):
            replayer.offer(raw)
    except DeliveryError as exc:  # Kafka refused: that question stays failed, and so would the next
        replayer.report.stopped = f"could not publish: {exc}"
    except TimeoutError as exc:
        replayer.report.stopped = f"could not read {topics.DEAD_LETTER} to its end: {exc}"
    finally:
        store.close()
    return replayer.report


def parse_since(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# ---- rerun --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredQuestion:
    question_id: str
    question_text: str
    original_answer: str
    status: Status
    run: int
    updated_at: datetime


def stored_question(database_url: str, question_id: str) -> StoredQuestion | None:
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT question_id, question_text, original_answer, status, runs, updated_at FROM questions "
            "WHERE question_id = %s",
            (question_id,),
        ).fetchone()
    if row is None:
        return None
    return StoredQuestion(row[0], row[1], row[2], Status(row[3]), row[4], row[5])


def post_query(storage_url: str, question: StoredQuestion, timeout_s: float = 30.0) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"question_text": question.question_text, "original_answer": question.original_answer})
    request = urllib.request.Request(
        f"{storage_url.rstrip('/')}/query",
        data=body.encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def rerun_outcome(
    before: StoredQuestion, after: StoredQuestion | None, http_status: int, body: dict
) -> tuple[bool, str]:
    """(new run started, what to tell the operator)."""
    if after is not None and after.run > before.run:
        return (
            True,
            f"started run {after.run} of {before.question_id} (it was {before.status.value} in run {before.run})",
        )
    if http_status == 200:
        return False, f"{before.question_id} is validated: answered, nothing to re-run"
    if http_status == 202:
        return False, (
            f"{before.question_id} is still pending in run {before.run} (since {before.updated_at.isoformat()}): "
            "younger than storage_service's PENDING_TIMEOUT_S, so its chain may still finish"
        )
    return False, f"storage_service refused: HTTP {http_status} {body.get('error')}: {body.get('message')}"
