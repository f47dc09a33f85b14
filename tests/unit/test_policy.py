import pytest

from common import topics
from common.messages import LLMError, PipelineMessage, Score
from common.policy import FailureKind, RetryPolicy, Route, after_scoring, classify_llm_failure, route_by_score


@pytest.mark.parametrize(
    ("f1", "attempt", "expected"),
    [
        (0.75, 1, Route.VALIDATED),  # the threshold itself passes
        (0.99, 3, Route.VALIDATED),
        (0.7499, 1, Route.REGENERATE),
        (0.10, 2, Route.REGENERATE),
        (0.10, 3, Route.LOW_QUALITY),
        (0.10, 4, Route.LOW_QUALITY),  # past the cap (config lowered mid-flight) still ends
    ],
)
def test_route_by_score(f1, attempt, expected):
    assert route_by_score(f1, attempt, threshold=0.75, max_attempts=3) is expected


def test_routes_are_topics():
    assert Route.VALIDATED.value == topics.VALIDATED_RESPONSES
    assert Route.REGENERATE.value == topics.QUESTIONS_PENDING
    assert Route.LOW_QUALITY.value == topics.LOW_QUALITY_RESPONSES


@pytest.mark.parametrize(
    ("status", "timed_out", "unreachable", "expected"),
    [
        (503, False, False, FailureKind.OVERLOAD),
        (None, True, False, FailureKind.OVERLOAD),
        (None, False, True, FailureKind.OVERLOAD),
        (429, False, False, FailureKind.QUOTA),
        (500, False, False, FailureKind.ERROR),
        (404, False, False, FailureKind.ERROR),
        (200, False, False, FailureKind.ERROR),  # 200 with an unusable body
    ],
)
def test_classify_llm_failure(status, timed_out, unreachable, expected):
    assert classify_llm_failure(status, timed_out=timed_out, unreachable=unreachable) is expected


def test_overload_backoff_is_exponential():
    policy = RetryPolicy(FailureKind.OVERLOAD, base_delay_s=5, max_retries=5, exponential=True)
    assert [policy.delay_s(n) for n in range(5)] == [5, 10, 20, 40, 80]


def test_quota_delay_is_fixed():
    policy = RetryPolicy(FailureKind.QUOTA, base_delay_s=60, max_retries=5, exponential=False)
    assert {policy.delay_s(n) for n in range(5)} == {60}


def test_retry_caps():
    policy = RetryPolicy(FailureKind.OVERLOAD, base_delay_s=1, max_retries=2, exponential=True)
    assert not policy.exhausted(0)
    assert not policy.exhausted(1)
    assert policy.exhausted(2)


def test_each_budget_counts_only_its_own_retries():
    msg = PipelineMessage.new("q?").evolve(retry_count=5, overload_retries=1, quota_retries=4)
    overload = RetryPolicy(FailureKind.OVERLOAD, base_delay_s=5, max_retries=3, exponential=True)
    quota = RetryPolicy(FailureKind.QUOTA, base_delay_s=60, max_retries=4, exponential=False)
    assert (overload.spent(msg), quota.spent(msg)) == (1, 4)
    assert not overload.exhausted(overload.spent(msg)) and quota.exhausted(quota.spent(msg))


def test_overload_delay_grows_with_overload_retries_only():
    overload = RetryPolicy(FailureKind.OVERLOAD, base_delay_s=5, max_retries=5, exponential=True)
    msg = PipelineMessage.new("q?").evolve(retry_count=3, overload_retries=1, quota_retries=2)
    assert overload.due_at(msg) == msg.updated_at.timestamp() + 10  # 5 * 2^1, not 5 * 2^3


@pytest.mark.parametrize(
    ("kind", "counter"), [(FailureKind.OVERLOAD, "overload_retries"), (FailureKind.QUOTA, "quota_retries")]
)
def test_a_retry_adds_one_to_the_total_and_to_its_own_budget(kind, counter):
    policy = RetryPolicy(kind, base_delay_s=5, max_retries=5, exponential=kind is FailureKind.OVERLOAD)
    msg = PipelineMessage.new("q?").evolve(retry_count=2, overload_retries=1, quota_retries=1)
    out = policy.retried(msg, due=msg.updated_at.timestamp())
    assert out.retry_count == 3 and getattr(out, counter) == 2
    assert out.overload_retries + out.quota_retries == 3


def test_given_up_names_the_budget_that_ran_out():
    quota = RetryPolicy(FailureKind.QUOTA, base_delay_s=60, max_retries=2, exponential=False)
    msg = PipelineMessage.new("q?").evolve(quota_retries=2, error=LLMError(status=429, kind="quota", message="slow"))
    out = quota.given_up(msg, topics.ERRORS_QUOTA)
    assert out.error.kind == "retries_exhausted" and out.error.status == 429
    assert "2 quota retries" in out.error.message and "slow" in out.error.message


def _scored(f1: float) -> Score:
    return Score(precision=f1, recall=f1, f1=f1, model="m")


def test_after_scoring_regenerates_with_next_attempt_and_fresh_retry_budget():
    msg = PipelineMessage.new("q?", "ref").evolve(llm_answer="a", retry_count=3, overload_retries=2, quota_retries=1)
    topic, out = after_scoring(msg, _scored(0.2), threshold=0.75, max_attempts=3)
    assert topic == topics.QUESTIONS_PENDING
    assert (out.attempt, out.retry_count, out.llm_answer) == (2, 0, None)
    assert (out.overload_retries, out.quota_retries) == (0, 0)
    assert [(r.attempt, r.llm_answer) for r in out.score_history] == [(1, "a")]


def test_after_scoring_keeps_answer_and_history_when_validated():
    msg = PipelineMessage.new("q?", "ref").evolve(llm_answer="good", attempt=2)
    topic, out = after_scoring(msg, _scored(0.9), threshold=0.75, max_attempts=3)
    assert topic == topics.VALIDATED_RESPONSES
    assert out.llm_answer == "good" and out.score.f1 == 0.9
    assert [r.attempt for r in out.score_history] == [2]


def test_after_scoring_low_quality_on_last_attempt():
    msg = PipelineMessage.new("q?", "ref").evolve(llm_answer="bad", attempt=3)
    topic, _ = after_scoring(msg, _scored(0.1), threshold=0.75, max_attempts=3)
    assert topic == topics.LOW_QUALITY_RESPONSES
