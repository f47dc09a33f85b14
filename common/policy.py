"""The pipeline's rules as plain functions: routing by score, error classification, retry delays."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from common import topics
from common.messages import PipelineMessage, Score, ScoreRecord


class Route(str, Enum):
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


class FailureKind(str, Enum):
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


@dataclass(frozen=True)
class RetryPolicy:
    base_delay_s: float
    max_retries: int
    exponential: bool

    def delay_s(self, retry_count: int) -> float:
        """Overload: base * 2^retry_count; quota: the fixed base."""
        return self.base_delay_s * (2**retry_count if self.exponential else 1)

    def exhausted(self, retry_count: int) -> bool:
        return retry_count >= self.max_retries


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
            retry_count=0,
            llm_answer=None,
            error=None,
            not_before=None,
        )
    return route.value, message.evolve(score=score, score_history=history)
