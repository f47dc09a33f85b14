from common import topics
from common.flink_rest import ScoreJobWatch
from common.messages import PipelineMessage, Score
from score_validator.backup import backup_handler


class FixedScorer:
    def __init__(self, f1):
        self.f1, self.calls = f1, 0

    def score(self, pairs):
        self.calls += len(pairs)
        return [Score(precision=self.f1, recall=self.f1, f1=self.f1, model="m") for _ in pairs]


def jobs(state):
    return lambda: [{"name": "Flink Score Validator Job", "state": state}]


def test_stands_by_while_the_flink_job_runs():
    scorer = FixedScorer(0.9)
    handle = backup_handler(scorer, ScoreJobWatch("http://x", timeout_s=3, ttl_s=5, fetch=jobs("RUNNING")), 0.75, 3)
    outputs = handle(PipelineMessage.new("q?", "r").evolve(llm_answer="a"), topics.LLM_RESPONSES_SUCCESS)
    assert scorer.calls == 0 and outputs == []


def test_scores_and_routes_while_the_job_is_down():
    scorer = FixedScorer(0.9)
    handle = backup_handler(scorer, ScoreJobWatch("http://x", timeout_s=3, ttl_s=5, fetch=jobs("FAILED")), 0.75, 3)
    [(topic, out)] = handle(PipelineMessage.new("q?", "r").evolve(llm_answer="a"), topics.LLM_RESPONSES_SUCCESS)
    assert topic == topics.VALIDATED_RESPONSES and out.score.f1 == 0.9


def test_unreachable_flink_means_take_over_and_answers_are_cached():
    calls = []

    def unreachable():
        calls.append(1)
        raise OSError("connection refused")

    now = [0.0]
    watch = ScoreJobWatch("http://x", timeout_s=3, ttl_s=5, fetch=unreachable, clock=lambda: now[0])
    assert watch.active() is False
    assert watch.active() is False and len(calls) == 1  # within the TTL: no second request
    now[0] = 6.0
    watch.active()
    assert len(calls) == 2
