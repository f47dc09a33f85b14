"""The pipeline's rules as plain functions: routing by score, error classification, retry delays."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from common import topics
from common.messages import LLMError, PipelineMessage, Score, ScoreRecord


class Route(StrEnum):
    VALIDATED = topics.VALIDATED_RESPONSES
    REGENERATE = topics.QUESTIONS_PENDING
    LOW_QUALITY = topics.LOW_QUALITY_RESPONSES


def route_by_score(f1: float, attempt: int, threshold: float, max_attempts: int) -> Route:
    """F1 at or above the threshold passes; below it, regenerate until `max_attempts` answers were scored."""
    if f1 >= threshold:
        return Route.VALIDATED
    if attempt < max_attempts:
        return Route.REGENERATE
    return Route.LOW_QUALITY


class FailureKind(StrEnum):
    OVERLOAD = "overload"
    QUOTA = "quota"
    ERROR = "error"


FAILURE_TOPICS = {
    FailureKind.OVERLOAD: topics.ERRORS_OVERLOAD,
    FailureKind.QUOTA: topics.ERRORS_QUOTA,
    FailureKind.ERROR: topics.LLM_RESPONSES_ERROR,
}


def classify_llm_failure(status: int | None, *, timed_out: bool = False, unreachable: bool = False) -> FailureKind:
    """503, timeouts and refused connections mean 'busy, try later'; 429 means quota; the rest is an error."""
    if timed_out or unreachable or status == 503:
        return FailureKind.OVERLOAD
    if status == 429:
        return FailureKind.QUOTA
    return FailureKind.ERROR


# A server's Retry-After is honoured up to this: a bogus header must not park a question for days.
MAX_RETRY_AFTER_S = 3600.0


def retry_wait_s(configured_s: float, retry_after_s: float | None) -> float:
    """A longer server-given delay (Retry-After, capped) wins over the configured one; a shorter does not."""
    if retry_after_s is None:
        return configured_s
    return max(configured_s, min(retry_after_s, MAX_RETRY_AFTER_S))


@dataclass(frozen=True)
class RetryPolicy:
    """One retry budget: overload (503, timeouts) or quota (429). Each counts only its own retries."""

    kind: FailureKind
    base_delay_s: float
    max_retries: int
    exponential: bool

    def spent(self, message: PipelineMessage) -> int:
        """Retries of this kind already made within the message's attempt."""
        return message.quota_retries if self.kind is FailureKind.QUOTA else message.overload_retries

    def delay_s(self, retries: int) -> float:
        """Overload: base * 2^retries (overload retries only); quota: the fixed base."""
        return self.base_delay_s * (2**retries if self.exponential else 1)

    def exhausted(self, retries: int) -> bool:
        return retries >= self.max_retries

    def wait_s(self, message: PipelineMessage) -> float:
        """The delay before the retry: this policy's, or the server's Retry-After when that is longer."""
        return retry_wait_s(self.delay_s(self.spent(message)), message.error.retry_after_s if message.error else None)

    def due_at(self, message: PipelineMessage) -> float:
        """When a failed call may be retried (epoch seconds): the delay counts from the failure."""
        return message.updated_at.timestamp() + self.wait_s(message)

    def retried(self, message: PipelineMessage, due: float) -> PipelineMessage:
        """The message to ask the LLM again: one more retry in total and in this kind's budget."""
        counter = "quota_retries" if self.kind is FailureKind.QUOTA else "overload_retries"
        return message.evolve(
            retry_count=message.retry_count + 1,
            **{counter: self.spent(message) + 1},
            error=None,
            not_before=datetime.fromtimestamp(due, UTC),
        )

    def given_up(self, message: PipelineMessage, source_topic: str) -> PipelineMessage:
        """The failed outcome once this kind's budget is spent (the question fails)."""
        previous = message.error.message if message.error else ""
        spent = self.spent(message)
        error = LLMError(
            status=message.error.status if message.error else None,
            kind="retries_exhausted",
            message=f"gave up after {spent} {self.kind.value} retries ({source_topic}): {previous}"[:500],
        )
        return message.evolve(error=error)


def after_scoring(
    message: PipelineMessage, score: Score, threshold: float, max_attempts: int
) -> tuple[str, PipelineMessage]:
    """The topic and message that follow a scored answer; the score joins the message's history."""
    record = ScoreRecord(
        attempt=message.attempt,
        f1=score.f1,
        precision=score.precision,
        recall=score.recall,
        llm_answer=message.llm_answer or "",
    )
    history = [*message.score_history, record]
    route = route_by_score(score.f1, message.attempt, threshold, max_attempts)
    if route is Route.REGENERATE:
        return route.value, message.evolve(
            score=score,
            score_history=history,
            attempt=message.attempt + 1,
            retry_count=0,  # every attempt starts with fresh retry budgets
            overload_retries=0,
            quota_retries=0,
            llm_answer=None,
            error=None,
            not_before=None,
        )
    return route.value, message.evolve(score=score, score_history=history)
