"""The storage decisions, as plain functions: which outcome wins, what a dead letter ends, when a
question may be asked again, and what the Flink job's state means for /health. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from common.flink_rest import SCORE_JOB_NAME, score_job_active
from common.messages import DeadLetter, PipelineMessage
from common.topics import Status


class OutcomeResult(StrEnum):
    """What storing a terminal outcome (or a dead letter) did to its question."""

    APPLIED = "applied"  # the first terminal outcome of the question's current run: stored
    DUPLICATE = "duplicate"  # the current run had already ended: counted, never applied
    OLDER_RUN = "older_run"  # belongs to a run that is no longer the question's current one: ignored
    UNKNOWN_QUESTION = "unknown_question"  # a dead letter naming no question we hold: nothing to end


@dataclass(frozen=True)
class QuestionState:
    """The part of a `questions` row the decisions need."""

    status: Status
    run: int
    updated_at: datetime


def decide_outcome(current: QuestionState | None, run: int | None, *, creates_missing: bool) -> OutcomeResult:
    """First terminal outcome of a run wins.

    `run` None (a dead letter whose run is unknown) means the question's current run.
    `creates_missing`: an outcome for a question the database does not hold creates its row (it can
    only come from a pipeline message, which carries the question); a dead letter cannot.
    A run newer than the row's cannot happen (runs are claimed before their message is published);
    it is treated like an older one: not the question's current run, so never applied.
    """
    if current is None:
        return OutcomeResult.APPLIED if creates_missing else OutcomeResult.UNKNOWN_QUESTION
    if run is not None and run != current.run:
        return OutcomeResult.OLDER_RUN
    if current.status is Status.PENDING:
        return OutcomeResult.APPLIED
    return OutcomeResult.DUPLICATE


def may_start_new_run(current: QuestionState, now: datetime, pending_timeout_s: float) -> bool:
    """Asking again starts a new run after a failed or low-quality end, or when the question has
    been pending longer than `pending_timeout_s` (its chain is presumed lost). A validated question
    is answered, and a recently pending one is still on its way."""
    if current.status in (Status.FAILED, Status.LOW_QUALITY):
        return True
    return current.status is Status.PENDING and (now - current.updated_at).total_seconds() >= pending_timeout_s


def original_message(letter: DeadLetter) -> PipelineMessage | None:
    """The pipeline message a dead letter wraps, when its kept bytes are all there and still parse."""
    if letter.raw_truncated:
        return None
    try:
        return PipelineMessage.from_bytes(letter.raw())
    except (ValueError, RecursionError):  # MessageError is a ValueError; deep nesting is not
        return None


def dead_letter_target(letter: DeadLetter, original: PipelineMessage | None) -> tuple[str | None, int | None]:
    """Which question and run a dead letter ends: its own fields first, then the wrapped message's.
    A run of None means "the question's current run"; a question of None means nothing to end."""
    question_id = letter.question_id or (original.question_id if original else None)
    run = letter.run if letter.run is not None else (original.run if original else None)
    if question_id is not None and storable_text(question_id) != question_id:
        return None, run  # not an id PostgreSQL could hold, so not one of our questions
    return question_id, run


def storable_text(text: str) -> str:
    """`text` as PostgreSQL can store it: NUL characters and lone surrogates (which a dead letter's
    reason may quote from the bad message) spelled out as escapes instead of refused."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def dead_letter_reason(letter: DeadLetter) -> str:
    """The failure text kept on the question and in `failures`: who gave up, where, and why."""
    return storable_text(f"dead-lettered by {letter.stage} from {letter.source_topic}: {letter.reason}")


def flink_job_state(jobs: list[dict]) -> tuple[bool, str]:
    """(running, state) of the score job in a /jobs/overview answer: its active state, else the
    state of its latest run (FAILED, CANCELED, ...), else "missing"."""
    mine = [job for job in jobs if job.get("name") == SCORE_JOB_NAME]
    if score_job_active(mine):
        return True, next(job["state"] for job in mine if score_job_active([job]))
    if not mine:
        return False, "missing"
    latest = max(mine, key=lambda job: job.get("start-time", 0))
    return False, str(latest.get("state", "unknown"))
