"""Prometheus metrics (common/metrics.py) recorded by the real code paths, on the fakes of
tests/fakes.py: every test reads a sample before and after and asserts that it moved.

The registry is the process's default one and counters never go back, so tests compare deltas."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from prometheus_client import REGISTRY

from common import metrics, topics
from common.flink_rest import ScoreJobStatus
from common.kafka import MAX_HANDLER_FAILURES, TransientError
from common.ledger import QuestionState
from common.messages import LLMError, PipelineMessage, Score, ScoreRecord
from common.policy import FailureKind, RetryPolicy
from common.settings import ServiceSettings
from kafka_ui.app import create_app as create_kafka_ui
from kafka_ui.browser import KafkaBrowser, PartitionLag, TopicSummary, lags_by_topic
from llm_consumer.clients import Generation, LLMFailure, OllamaClient, OpenAIClient
from llm_consumer.worker import llm_handler
from retry_consumers.worker import retry_handler
from storage_service.app import create_app as create_storage
from storage_service.config import StorageSettings
from storage_service.consumer import dead_letter_handler, outcome_handler
from storage_service.rules import OutcomeResult
from tests.fakes import FakeConsumer, FakeMessage, FakeProducer, question, runner
from tests.unit.test_storage_consumer import FakeCache as ConsumerCache
from tests.unit.test_storage_consumer import FakeRepo
from tests.unit.web_fakes import UNREACHABLE_KAFKA, FakeCache, FakeRepository, scorer_app


def sample(name: str, **labels: str) -> float:
    """The current value of one series (0 when it has no value yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def moved(name: str, action: Callable[[], Any], **labels: str) -> float:
    """How much the series moved while `action` ran."""
    before = sample(name, **labels)
    action()
    return sample(name, **labels) - before


# --- the consumer runner ---------------------------------------------------------------------------


def test_a_processed_message_is_counted_by_stage_and_topic_and_the_poll_marks_liveness():
    r = runner(messages=[FakeMessage(question().to_bytes())])
    labels = {"service": "test-stage", "topic": topics.QUESTIONS_PENDING}
    assert moved("yahoo_consumer_messages_total", r.run, **labels) == 1
    assert sample("yahoo_worker_last_poll_timestamp_seconds", service="test-stage") > 1_700_000_000


def test_an_unparseable_message_is_a_decode_dead_letter():
    r = runner()
    labels = {"stage": "test-stage", "reason": "decode"}
    assert moved("yahoo_dead_letters_total", lambda: r.handle(FakeMessage(b"not json")), **labels) == 1


def test_a_handler_that_keeps_failing_counts_each_failure_then_one_handler_dead_letter():
    def poison(_m, _t):
        raise ValueError("bug")

    r = runner(poison)
    failures = sample("yahoo_consumer_handler_failures_total", service="test-stage")
    letters = sample("yahoo_dead_letters_total", stage="test-stage", reason="handler")
    for _ in range(MAX_HANDLER_FAILURES):
        r.handle(FakeMessage(question().to_bytes()))
    assert sample("yahoo_consumer_handler_failures_total", service="test-stage") - failures == MAX_HANDLER_FAILURES
    assert sample("yahoo_dead_letters_total", stage="test-stage", reason="handler") - letters == 1


def test_an_outage_is_counted_and_a_broker_that_fails_to_acknowledge_too():
    def down(_m, _t):
        raise TransientError("db down")

    r = runner(down)
    assert (
        moved(
            "yahoo_consumer_outages_total", lambda: r.handle(FakeMessage(question().to_bytes())), service="test-stage"
        )
        == 1
    )
    r = runner(lambda m, _t: [(topics.LLM_REQUESTS, m)], producer=FakeProducer(fail_flushes=1))
    assert (
        moved(
            "yahoo_consumer_outages_total", lambda: r.handle(FakeMessage(question().to_bytes())), service="test-stage"
        )
        == 1
    )


def test_a_rebuilt_consumer_is_counted():
    r = runner(consumer_factory=FakeConsumer)
    assert moved("yahoo_consumer_rebuilds_total", r._rebuild_consumer, service="test-stage") == 1


# --- llm_consumer and the retry consumers ------------------------------------------------------------


class ScriptedClient:
    url = "http://llm/api/generate"

    def __init__(self, reply: Generation | LLMFailure) -> None:
        self.reply = reply

    def request_body(self, prompt: str) -> dict:
        return {"prompt": prompt}

    def generate(self, _body: dict) -> Generation:
        if isinstance(self.reply, LLMFailure):
            raise self.reply
        return self.reply


def test_an_answered_call_counts_its_latency_and_tokens():
    reply = Generation("Santiago", "m", latency_ms=1500.0, prompt_tokens=30, completion_tokens=12)
    handle = llm_handler(ScriptedClient(reply))  # type: ignore[arg-type]
    calls = sample("yahoo_llm_calls_total", kind="success")
    seconds = sample("yahoo_llm_call_duration_seconds_sum", kind="success")
    prompt, completion = (
        sample("yahoo_llm_tokens_total", direction="prompt"),
        sample("yahoo_llm_tokens_total", direction="completion"),
    )
    handle(question(), topics.QUESTIONS_PENDING)
    assert sample("yahoo_llm_calls_total", kind="success") - calls == 1
    assert sample("yahoo_llm_call_duration_seconds_sum", kind="success") - seconds == pytest.approx(1.5)
    assert sample("yahoo_llm_tokens_total", direction="prompt") - prompt == 30
    assert sample("yahoo_llm_tokens_total", direction="completion") - completion == 12


@pytest.mark.parametrize(("status", "kind"), [(503, "overload"), (429, "quota"), (500, "error")])
def test_a_failed_call_is_counted_by_its_kind(status, kind):
    handle = llm_handler(ScriptedClient(LLMFailure("no", status=status)))  # type: ignore[arg-type]
    assert moved("yahoo_llm_calls_total", lambda: handle(question(), topics.QUESTIONS_PENDING), kind=kind) == 1
    assert sample("yahoo_llm_call_duration_seconds_count", kind=kind) >= 1


def test_a_skipped_call_is_counted_by_the_ledgers_reason():
    answered = QuestionState(status="pending", runs=1, answered=True)
    handle = llm_handler(ScriptedClient(Generation("x", "m", 1.0)), lambda _m: answered)  # type: ignore[arg-type]
    calls = sample("yahoo_llm_calls_total", kind="success")
    assert (
        moved(
            "yahoo_llm_calls_skipped_total",
            lambda: handle(question(), topics.QUESTIONS_PENDING),
            reason="already_answered",
        )
        == 1
    )
    assert sample("yahoo_llm_calls_total", kind="success") == calls  # no call was made


def test_the_clients_read_the_token_counts_their_servers_report(monkeypatch):
    ollama = OllamaClient("http://llm", "m", 5, {})
    reply = {"response": "ok", "prompt_eval_count": 7, "eval_count": 3}
    monkeypatch.setattr(ollama, "_post", lambda _body: (reply, 10.0))
    generation = ollama.generate({})
    assert (generation.prompt_tokens, generation.completion_tokens) == (7, 3)
    openai = OpenAIClient("http://llm/v1", "m", 5, 0.7, 64)
    chat = {"choices": [{"message": {"content": "ok"}}], "usage": {"prompt_tokens": 9, "completion_tokens": True}}
    monkeypatch.setattr(openai, "_post", lambda _body: (chat, 10.0))
    generation = openai.generate({})
    assert (generation.prompt_tokens, generation.completion_tokens) == (9, None)  # a bool is not a count


def test_a_republished_retry_is_counted_by_kind_and_its_new_retry_count():
    policy = RetryPolicy(FailureKind.QUOTA, base_delay_s=60, max_retries=5, exponential=False)
    message = question().evolve(retry_count=2, quota_retries=2, error=LLMError(status=429, kind="quota"))
    handle = retry_handler(policy, clock=lambda: message.updated_at.timestamp() + 3600)
    assert (
        moved("yahoo_retries_total", lambda: handle(message, topics.ERRORS_QUOTA), kind="quota", retry_count="3") == 1
    )


# --- storage: terminal outcomes -----------------------------------------------------------------------


def regenerated(f1s: list[float], started_s_ago: float = 42.0) -> PipelineMessage:
    history = [
        ScoreRecord(attempt=i + 1, f1=f1, precision=f1, recall=f1, llm_answer=f"answer {i}") for i, f1 in enumerate(f1s)
    ]
    return question("regenerated?").evolve(
        attempt=len(f1s),
        llm_answer="answer",
        score=Score(precision=f1s[-1], recall=f1s[-1], f1=f1s[-1], model="m"),
        score_history=history,
        created_at=datetime.now(UTC) - timedelta(seconds=started_s_ago),
    )


def test_an_applied_regenerated_outcome_records_scores_attempts_and_time_taken():
    handle = outcome_handler(FakeRepo(OutcomeResult.APPLIED), ConsumerCache())  # type: ignore[arg-type]
    names = [
        ("yahoo_outcomes_total", {"status": "low_quality", "result": "applied"}),
        ("yahoo_f1_score_count", {"attempt": "1"}),
        ("yahoo_f1_score_count", {"attempt": "3"}),
        ("yahoo_regeneration_f1_sum", {"stage": "first"}),
        ("yahoo_regeneration_f1_sum", {"stage": "final"}),
        ("yahoo_attempts_per_question_sum", {"status": "low_quality"}),
        ("yahoo_end_to_end_seconds_count", {"status": "low_quality"}),
        ("yahoo_end_to_end_seconds_sum", {"status": "low_quality"}),
    ]
    before = [sample(name, **labels) for name, labels in names]
    handle(regenerated([0.2, 0.6, 0.4]), topics.LOW_QUALITY_RESPONSES)
    delta = [sample(name, **labels) - b for (name, labels), b in zip(names, before, strict=True)]
    assert delta[:3] == [1, 1, 1]
    assert delta[3] == pytest.approx(0.2) and delta[4] == pytest.approx(0.6)  # first attempt, best at the end
    assert delta[5] == 3 and delta[6] == 1 and 41 <= delta[7] < 60


def test_a_single_attempt_is_no_regeneration():
    handle = outcome_handler(FakeRepo(OutcomeResult.APPLIED), ConsumerCache())  # type: ignore[arg-type]
    first = sample("yahoo_regeneration_f1_count", stage="first")
    assert (
        moved("yahoo_f1_score_count", lambda: handle(regenerated([0.9]), topics.VALIDATED_RESPONSES), attempt="1") == 1
    )
    assert sample("yahoo_regeneration_f1_count", stage="first") == first


def test_a_duplicate_outcome_is_counted_but_adds_no_scores():
    handle = outcome_handler(FakeRepo(OutcomeResult.DUPLICATE), ConsumerCache())  # type: ignore[arg-type]
    scores = sample("yahoo_f1_score_count", attempt="1")
    outcomes = sample("yahoo_outcomes_total", status="validated", result="duplicate")
    assert moved("yahoo_duplicate_outcomes_total", lambda: handle(regenerated([0.9]), topics.VALIDATED_RESPONSES)) == 1
    assert sample("yahoo_outcomes_total", status="validated", result="duplicate") - outcomes == 1
    assert sample("yahoo_f1_score_count", attempt="1") == scores


def test_a_dead_letter_that_ends_a_question_is_a_failed_outcome():
    from common.messages import DeadLetter

    message = question("dead?")
    letter = DeadLetter.wrap(
        message.to_bytes(), stage="s", reason="r", source_topic=topics.QUESTIONS_PENDING, message=message
    )
    handle = dead_letter_handler(FakeRepo(OutcomeResult.APPLIED))  # type: ignore[arg-type]
    labels = {"status": "failed", "result": "applied"}
    assert moved("yahoo_outcomes_total", lambda: handle(letter, topics.DEAD_LETTER), **labels) == 1


# --- the HTTP services ---------------------------------------------------------------------------------


class Job:
    def __init__(self, running: bool) -> None:
        self.running = running

    def status(self) -> ScoreJobStatus:
        return ScoreJobStatus(self.running, "RUNNING" if self.running else "missing")


def storage_client(job: Job | None = None):
    settings = StorageSettings(kafka_bootstrap_servers=UNREACHABLE_KAFKA)
    app = create_storage(settings, FakeRepository(), FakeCache(), FakeProducer(), job or Job(True))  # type: ignore[arg-type]
    return app.test_client()


def test_post_query_counts_accepted_questions_by_outcome_and_cache_lookups():
    client = storage_client()
    body = {"question_text": "How many metrics?", "original_answer": "Enough."}
    published = sample("yahoo_questions_published_total")
    assert moved("yahoo_questions_accepted_total", lambda: client.post("/query", json=body), outcome="published") == 1
    assert sample("yahoo_questions_published_total") - published == 1
    assert moved("yahoo_questions_accepted_total", lambda: client.post("/query", json=body), outcome="pending") == 1
    assert moved("yahoo_questions_accepted_total", lambda: client.post("/query", json={}), outcome="rejected") == 1
    assert moved("yahoo_cache_requests_total", lambda: client.post("/query", json=body), result="miss") == 1


def test_requests_are_counted_by_route_rule_never_by_raw_path():
    client = storage_client()
    labels = {"service": "storage-service", "route": "/status/<question_id>", "method": "GET", "status": "404"}
    assert moved("yahoo_http_requests_total", lambda: client.get("/status/abc"), **labels) == 1
    unmatched = {"service": "storage-service", "route": "<unmatched>", "method": "GET", "status": "404"}
    assert moved("yahoo_http_requests_total", lambda: client.get("/no/such/path"), **unmatched) == 1
    duration = {"service": "storage-service", "route": "/status/<question_id>"}
    assert moved("yahoo_http_request_duration_seconds_count", lambda: client.get("/status/x"), **duration) == 1


def exposition(client) -> str:
    resp = client.get("/metrics/prometheus")
    assert resp.status_code == 200 and resp.content_type.startswith("text/plain; version=")
    return resp.get_data(as_text=True)


@pytest.mark.parametrize(("running", "up"), [(True, 1.0), (False, 0.0)])
def test_storage_serves_the_text_format_with_the_flink_job_read_at_scrape_time(running, up):
    client = storage_client(Job(running))
    client.post("/query", json={"question_text": "Scraped?", "original_answer": "Yes."})
    text = exposition(client)
    assert f"yahoo_flink_job_up {up}" in text
    assert 'yahoo_http_requests_total{method="POST",route="/query",service="storage-service",status="202"}' in text
    assert client.get("/metrics").is_json  # the seed's JSON /metrics is still there


def test_the_scorer_counts_requests_by_outcome_and_times_the_model():
    app, _scorer = scorer_app()
    client = app.test_client()
    pair = {"candidate": "a b", "reference": "a c"}
    seconds = sample("yahoo_score_duration_seconds_count")
    assert moved("yahoo_score_requests_total", lambda: client.post("/score", json=pair), outcome="ok") == 1
    assert sample("yahoo_score_duration_seconds_count") - seconds == 1
    batch = {"pairs": "not a list"}
    assert moved("yahoo_score_requests_total", lambda: client.post("/score/batch", json=batch), outcome="rejected") == 1
    assert "yahoo_score_requests_total" in exposition(client)


class FakeBrowser:
    bootstrap = "fake:9092"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def topics(self) -> list[TopicSummary]:
        if self.fail:
            raise RuntimeError("broker away")
        return [TopicSummary(topics.QUESTIONS_PENDING, 2, 10, {0: 6, 1: 4})]

    def partition_lags(self, _summaries: list[TopicSummary], only=None) -> list[PartitionLag]:
        assert set(only) == set(topics.PIPELINE_GROUPS)
        return [
            PartitionLag(topics.GROUP_LLM_CONSUMER, topics.QUESTIONS_PENDING, 0, 4, 6),
            PartitionLag(topics.GROUP_LLM_CONSUMER, topics.QUESTIONS_PENDING, 1, 4, 4),
        ]

    def group_members(self, only=None) -> dict[str, int]:
        assert set(only) == set(topics.PIPELINE_GROUPS)
        return {topics.GROUP_LLM_CONSUMER: 2, topics.GROUP_STORAGE: 0}


def test_kafka_ui_exposes_lag_per_partition_and_group_members_at_scrape_time():
    text = exposition(create_kafka_ui(FakeBrowser()).test_client())  # type: ignore[arg-type]
    group, topic = topics.GROUP_LLM_CONSUMER, topics.QUESTIONS_PENDING
    assert f'yahoo_kafka_consumer_lag{{group="{group}",partition="0",topic="{topic}"}} 2.0' in text
    assert f'yahoo_kafka_consumer_lag{{group="{group}",partition="1",topic="{topic}"}} 0.0' in text
    assert f'yahoo_kafka_consumer_group_members{{group="{group}"}} 2.0' in text
    assert f'yahoo_kafka_consumer_group_members{{group="{topics.GROUP_STORAGE}"}} 0.0' in text


def test_a_broker_that_does_not_answer_leaves_the_lag_out_but_the_scrape_succeeds():
    text = exposition(create_kafka_ui(FakeBrowser(fail=True)).test_client())  # type: ignore[arg-type]
    assert "# TYPE yahoo_kafka_consumer_lag gauge" in text
    assert not re.search(r"^yahoo_kafka_consumer_lag\{", text, re.MULTILINE)


def test_per_topic_lag_of_the_browser_page_sums_partitions_against_every_partitions_end():
    summaries = [TopicSummary("t", 3, 30, {0: 10, 1: 10, 2: 10})]
    [lag] = lags_by_topic([PartitionLag("g", "t", 0, 10, 10), PartitionLag("g", "t", 1, 5, 10)], summaries)
    assert (lag.committed, lag.end, lag.lag) == (15, 30, 15)  # partition 2, never committed, is all lag


# --- a worker's metrics port ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_worker_serves_its_metrics_on_metrics_port_only_when_set():
    assert metrics.serve_worker_metrics(ServiceSettings(metrics_port=None)) is None
    port = free_port()
    url = metrics.serve_worker_metrics(ServiceSettings(metrics_port=port, bind_host="127.0.0.1"))
    assert url == f"http://127.0.0.1:{port}/metrics"
    metrics.mark_poll("port-test")
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    assert re.search(r'^yahoo_worker_last_poll_timestamp_seconds\{service="port-test"\} \S+$', text, re.MULTILINE)


def test_the_watchdog_counts_its_resubmissions(monkeypatch, tmp_path):
    from flink_job import watchdog
    from flink_job.config import WatchdogSettings

    dog = watchdog.Watchdog(WatchdogSettings(flink_checkpoints_dir=str(tmp_path)), "/bin/false")
    monkeypatch.setattr(watchdog, "submit", lambda *_a, **_k: "job-1")
    assert moved("yahoo_flink_job_resubmissions_total", lambda: dog.resubmit("MISSING"), result="submitted") == 1
    monkeypatch.setattr(watchdog, "list_jobs", lambda *_a, **_k: [])
    monkeypatch.setattr(watchdog.Watchdog, "resubmit", lambda self, state: None)
    dog.tick()
    assert sample("yahoo_worker_last_poll_timestamp_seconds", service="flink-job-watchdog") > 1_700_000_000


def test_metric_names_of_the_contract_are_all_defined():
    """The names the dashboard, Prometheus and Grafana use (docs/DESIGN.md, "Observability")."""
    text = exposition(storage_client())
    for name in ["yahoo_questions_published_total", "yahoo_duplicate_outcomes_total", "yahoo_score_duration_seconds"]:
        assert f"# TYPE {name.removesuffix('_total')}" in text
    described = {m.name for m in REGISTRY.collect()}
    for name in [
        "yahoo_http_requests",
        "yahoo_http_request_duration_seconds",
        "yahoo_cache_requests",
        "yahoo_questions_accepted",
        "yahoo_questions_published",
        "yahoo_llm_calls",
        "yahoo_llm_call_duration_seconds",
        "yahoo_llm_tokens",
        "yahoo_llm_calls_skipped",
        "yahoo_retries",
        "yahoo_dead_letters",
        "yahoo_consumer_outages",
        "yahoo_consumer_handler_failures",
        "yahoo_consumer_rebuilds",
        "yahoo_consumer_messages",
        "yahoo_worker_last_poll_timestamp_seconds",
        "yahoo_outcomes",
        "yahoo_duplicate_outcomes",
        "yahoo_f1_score",
        "yahoo_regeneration_f1",
        "yahoo_attempts_per_question",
        "yahoo_end_to_end_seconds",
        "yahoo_score_requests",
        "yahoo_score_duration_seconds",
    ]:
        assert name in described, name


def test_a_read_slower_than_its_deadline_is_left_out_of_the_scrape():
    release = threading.Event()

    def slow():
        release.wait(10)
        return [((), 1.0)]

    collector = metrics.GaugesAtScrape({"yahoo_test_slow": ("slow", [], slow)}, timeout_s=0.05)
    try:
        [family] = collector.collect()
        assert family.name == "yahoo_test_slow" and family.samples == []
    finally:
        release.set()


# --- series that exist at 0 before their first event ----------------------------------------------


def exists_at_zero(name: str, **labels: str) -> bool:
    return REGISTRY.get_sample_value(name, labels) == 0.0


def test_the_series_a_consumer_counts_exist_at_zero_before_their_first_event():
    """rate() sees a counter's first event only after a sample of 0: a series born at 1 hides it."""
    assert REGISTRY.get_sample_value("yahoo_consumer_outages_total", {"service": "zero-stage"}) is None
    runner(stage="zero-stage", source_topics=[topics.ERRORS_QUOTA])
    for name in (
        "yahoo_consumer_outages_total",
        "yahoo_consumer_handler_failures_total",
        "yahoo_consumer_rebuilds_total",
    ):
        assert exists_at_zero(name, service="zero-stage"), name
    assert exists_at_zero("yahoo_consumer_messages_total", service="zero-stage", topic=topics.ERRORS_QUOTA)
    assert exists_at_zero("yahoo_dead_letters_total", stage="zero-stage", reason="decode")


def test_the_retry_and_storage_series_exist_at_zero_before_their_first_event():
    metrics.start_retry_series("zero-kind", 3)
    assert [exists_at_zero("yahoo_retries_total", kind="zero-kind", retry_count=str(n)) for n in (1, 2, 3, 4)] == [
        True,
        True,
        True,
        False,
    ]
    storage_client()
    assert REGISTRY.get_sample_value("yahoo_cache_requests_total", {"result": "hit"}) is not None
    assert REGISTRY.get_sample_value("yahoo_questions_accepted_total", {"outcome": "rejected"}) is not None


def test_a_made_up_http_method_is_counted_as_other():
    client = storage_client()
    other = {"service": "storage-service", "route": "<unmatched>", "method": "other", "status": "405"}
    assert moved("yahoo_http_requests_total", lambda: client.open("/query", method="FOOBAR"), **other) == 1
    assert REGISTRY.get_sample_value("yahoo_http_requests_total", {**other, "method": "FOOBAR"}) is None


def test_a_busy_metrics_port_leaves_the_worker_running_without_metrics():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = ServiceSettings(metrics_port=port, bind_host="127.0.0.1")
        assert metrics.serve_worker_metrics(settings) is None  # logged, not raised


def test_a_read_that_hangs_is_not_started_again_by_the_next_scrape():
    release = threading.Event()
    started: list[int] = []

    def hanging_read():
        started.append(1)
        release.wait(10)
        return [((), 1.0)]

    read = metrics.BoundedRead(hanging_read)
    with pytest.raises(TimeoutError, match="no answer"):
        read(0.05)
    with pytest.raises(TimeoutError, match="earlier scrape"):
        read(0.05)
    assert len(started) == 1
    release.set()
    time.sleep(0.1)
    assert read(1.0) == [((), 1.0)] and len(started) == 2


def test_the_outcome_histograms_exist_at_zero_before_the_first_outcome():
    assert REGISTRY.get_sample_value("yahoo_f1_score_count", {"attempt": "7"}) is None
    metrics.start_outcome_series(max_attempts=7)
    assert exists_at_zero("yahoo_f1_score_count", attempt="7")
    for status in ("validated", "low_quality", "failed"):
        assert REGISTRY.get_sample_value("yahoo_end_to_end_seconds_count", {"status": status}) is not None
        assert REGISTRY.get_sample_value("yahoo_attempts_per_question_count", {"status": status}) is not None
    assert REGISTRY.get_sample_value("yahoo_regeneration_f1_count", {"stage": "first"}) is not None


class FakeAdmin:
    """The two AdminClient calls KafkaBrowser.partition_lags makes, answered from fixed offsets."""

    def __init__(self, committed: dict[str, list[TopicPartition]]) -> None:
        self.committed = committed

    def list_consumer_groups(self, request_timeout: float):
        groups = [SimpleNamespace(group_id=g) for g in self.committed]
        return SimpleNamespace(result=lambda timeout=None: SimpleNamespace(valid=groups))

    def list_consumer_group_offsets(self, requests, request_timeout: float):
        group = requests[0].group_id
        return {group: SimpleNamespace(result=lambda: SimpleNamespace(topic_partitions=self.committed[group]))}


def test_lag_covers_every_partition_of_a_topic_a_pipeline_group_committed_on():
    browser = KafkaBrowser("127.0.0.1:9")
    browser.admin = FakeAdmin(  # type: ignore[assignment]
        {
            topics.GROUP_LLM_CONSUMER: [TopicPartition(topics.QUESTIONS_PENDING, 0, 5)],  # partition 1: never
            "t-3f2a": [TopicPartition(topics.QUESTIONS_PENDING, 0, 1)],  # a test's throwaway group
        }
    )
    summaries = [TopicSummary(topics.QUESTIONS_PENDING, 2, 10, {0: 6, 1: 4})]
    lags = browser.partition_lags(summaries, only=topics.PIPELINE_GROUPS)
    assert [(p.group, p.partition, p.lag) for p in lags] == [
        (topics.GROUP_LLM_CONSUMER, 0, 1),
        (topics.GROUP_LLM_CONSUMER, 1, 4),  # stalled before its first commit there: all of it is lag
    ]
    assert {p.group for p in browser.partition_lags(summaries)} == {topics.GROUP_LLM_CONSUMER, "t-3f2a"}


class StuckAdmin:
    """An admin client that times out on every call, as librdkafka's did after a broker restart."""

    def list_consumer_groups(self, request_timeout: float):
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))


def test_a_browser_whose_admin_client_fails_gets_a_new_one():
    browser = KafkaBrowser("127.0.0.1:9")
    stuck = browser.admin = StuckAdmin()  # type: ignore[assignment]
    with pytest.raises(KafkaException):
        browser.groups()
    assert browser.admin is not stuck  # the next call (the next scrape or page) starts afresh
