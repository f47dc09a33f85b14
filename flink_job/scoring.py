"""What the Flink job does with one record, without Flink: decode it, score it, judge failures, route.

A record reaches the job as the JSON line RawRecordDeserializationSchema (flink_job/java) makes of
the Kafka record: partition, offset, key and value, the bytes in base64, a null value as null. So a
null value or bytes that are not a message become a dead letter here instead of failing the task.

Scorer failures come in two kinds, and the job must not confuse them:
- an **outage**: every call fails (connection refused, timeouts, 5xx). The job waits with backoff,
  for as long as it takes; the source is backpressured and nothing is dropped or invented.
- a **record the scorer cannot score**: this record fails while the scorer answers others (or the
  scorer refuses it with a 4xx). After `max_strikes` such failures it goes to dead-letter with the
  reason, and storage marks the question failed: one record never stalls the stream.
What tells them apart is a small shared state (when the scorer last answered) and, when nothing else
answered since the failure, one probe with a pair that always scores. PyFlink finishes a bundle
(every FLINK_PYTHON_BUNDLE_TIME_MS, and at each checkpoint) only when every record in flight is
done, so a record that fails alone would never see "others succeed" without the probe.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from common import topics
from common.messages import DeadLetter, MessageError, PipelineMessage, Score
from common.policy import after_scoring

log = logging.getLogger("flink_job")

STAGE = "flink_job"
# (topic, key, value) as the Kafka sink writes it: flink_job/java RowFieldSerializationSchema.
Output = tuple[str, str | None, str]
# A pair the model always scores: the probe that tells "the scorer is up" from "the scorer is down".
PROBE_PAIR = {"candidate": "The scorer is up.", "reference": "The scorer is up."}


# ---------------------------------------------------------------------------------------------
# The source record.


@dataclass(frozen=True)
class SourceRecord:
    value: bytes | None
    key: bytes | None = None
    topic: str = topics.LLM_RESPONSES_SUCCESS
    partition: int | None = None
    offset: int | None = None


def decode_source_record(text: str) -> SourceRecord:
    """The record from RawRecordDeserializationSchema's JSON line.

    Anything else (a plain message text, e.g. from a job version that read values as strings) is
    taken as the value itself, so it is still handled, never a crash.
    """
    try:
        data = json.loads(text)
        if isinstance(data, dict) and {"partition", "offset", "key", "value"} <= data.keys():
            return SourceRecord(
                value=_b64_or_none(data["value"]),
                key=_b64_or_none(data["key"]),
                topic=str(data.get("topic") or topics.LLM_RESPONSES_SUCCESS),
                partition=int(data["partition"]),
                offset=int(data["offset"]),
            )
    except (ValueError, TypeError, binascii.Error, RecursionError):
        pass
    return SourceRecord(value=text.encode("utf-8", "surrogatepass"))


def _b64_or_none(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value, validate=True)


def decode_message(record: SourceRecord) -> PipelineMessage:
    """The pipeline message in the record, or MessageError with the reason (null, not UTF-8, ...)."""
    if record.value is None:
        raise MessageError("null record value (a tombstone): no message to score")
    return PipelineMessage.from_bytes(record.value)


# ---------------------------------------------------------------------------------------------
# Outputs.


def safe_text(text: str) -> str:
    """Text that can be encoded as UTF-8 whatever it holds (a lone surrogate becomes U+FFFD)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def dead_letter_output(record: SourceRecord, reason: str, message: PipelineMessage | None = None) -> Output:
    """The record on `dead-letter`, keyed by question_id when known (storage marks it failed)."""
    envelope = DeadLetter.wrap(
        record.value,
        stage=STAGE,
        reason=safe_text(reason),
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        message=message,
    )
    return topics.DEAD_LETTER, envelope.question_id, envelope.to_bytes().decode("utf-8")


def routed_output(message: PipelineMessage, score: Score, threshold: float, max_attempts: int) -> Output:
    topic, out = after_scoring(message, score, threshold, max_attempts)
    return topic, out.question_id, out.to_bytes().decode("utf-8")


# ---------------------------------------------------------------------------------------------
# Judging a failed call: outage or unscorable record.


class ScorerFailure(StrEnum):
    REFUSED = "refused"  # a 4xx (not 408/429): the scorer answered, and refuses this input
    UNAVAILABLE = "unavailable"  # refused connection, timeout, 5xx, 408, 429


def classify_status(status: int) -> ScorerFailure | None:
    """None for a success; which kind of failure otherwise."""
    if status == 200:
        return None
    if 400 <= status < 500 and status not in (408, 429):
        return ScorerFailure.REFUSED
    return ScorerFailure.UNAVAILABLE


class Step(StrEnum):
    WAIT = "wait"  # outage: try again later, no strike, never give up
    RETRY = "retry"  # this record failed while the scorer answers: a strike, try again
    DEAD_LETTER = "dead_letter"  # strikes used up: this record cannot be scored


def judge_failure(failure: ScorerFailure, *, scorer_answered: bool, strikes: int, max_strikes: int) -> tuple[Step, int]:
    """What to do after a failed call, and the record's strikes after it.

    A strike is a failure that is the record's own: the scorer refused it (4xx), or the scorer
    answered something else since this call was sent. Failures while nothing answers are an outage.
    """
    if failure is ScorerFailure.UNAVAILABLE and not scorer_answered:
        return Step.WAIT, strikes
    strikes += 1
    return (Step.DEAD_LETTER if strikes >= max_strikes else Step.RETRY), strikes


def backoff_s(retry: int, *, first_s: float = 0.5, cap_s: float = 10.0) -> float:
    """0.5 s, 1 s, 2 s, ... capped: the wait before retry number `retry` (0-based)."""
    return min(first_s * 2 ** min(retry, 30), cap_s)


class ScorerHealth:
    """Shared by the records in flight in one task: when did the scorer last answer?"""

    def __init__(self, probe: Callable[[], Awaitable[bool]], clock: Callable[[], float] = time.monotonic) -> None:
        self._probe, self._clock = probe, clock
        self.last_answer_at = float("-inf")
        self._probe_lock: asyncio.Lock | None = None  # created in the task's event loop

    def now(self) -> float:
        return self._clock()

    def answered(self) -> None:
        self.last_answer_at = self._clock()

    async def answered_since(self, since: float) -> bool:
        """Has the scorer answered anything since `since`? Probes (one probe at a time) if unknown."""
        if self.last_answer_at >= since:
            return True
        if self._probe_lock is None:
            self._probe_lock = asyncio.Lock()
        async with self._probe_lock:
            if self.last_answer_at >= since:  # another record's probe answered meanwhile
                return True
            if await self._probe():
                self.answered()
                return True
            return False


@dataclass(frozen=True)
class CallResult:
    """One call to POST /score: a score, or a failure with what was seen."""

    score: Score | None = None
    failure: ScorerFailure | None = None
    detail: str = ""


@dataclass(frozen=True)
class Unscorable:
    reason: str


async def score_until_judged(
    call: Callable[[], Awaitable[CallResult]],
    health: ScorerHealth,
    *,
    max_strikes: int,
    max_backoff_s: float,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    question_id: str | None = None,
) -> Score | Unscorable:
    """Calls the scorer until it scores the pair (a Score) or the record is judged unscorable.

    In an outage this waits for as long as it takes (backoff capped at `max_backoff_s`).
    """
    strikes, retry = 0, 0
    while True:
        sent_at = health.now()
        result = await call()
        if result.score is not None:
            health.answered()
            return result.score
        failure = result.failure or ScorerFailure.UNAVAILABLE
        if failure is ScorerFailure.REFUSED:
            health.answered()
        answered = failure is ScorerFailure.REFUSED or await health.answered_since(sent_at)
        step, strikes = judge_failure(failure, scorer_answered=answered, strikes=strikes, max_strikes=max_strikes)
        if step is Step.DEAD_LETTER:
            return Unscorable(f"scorer could not score this answer ({strikes} failures): {result.detail}")
        delay = backoff_s(retry, cap_s=max_backoff_s)
        log_failure(step, result.detail, strikes, delay, question_id)
        retry += 1
        await sleep(delay)


def log_failure(step: Step, detail: str, strikes: int, delay_s: float, question_id: str | None) -> None:
    what = "scorer unavailable; waiting" if step is Step.WAIT else "scorer failed this answer; retrying"
    fields = {"question_id": question_id, "detail": detail, "strikes": strikes, "retry_in_s": delay_s}
    # The fields in the text as well: PyFlink forwards only the message to the TaskManager's log.
    log.warning("%s %s", what, json.dumps(fields, ensure_ascii=False), extra=fields)
