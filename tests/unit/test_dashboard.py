"""The dashboard without its dependencies: the PromQL of each panel, the shaping of Prometheus'
answers, the question trace (partition, decoding, order, timings), and the HTTP layer on fakes
(every bad input a 4xx JSON answer, an unreachable dependency a 503, never a stack trace)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from common import topics
from common.messages import DeadLetter, LLMError, PipelineMessage, Score, question_id_for
from dashboard import panels
from dashboard.app import create_app
from dashboard.config import DashboardSettings
from dashboard.kafka_trace import TraceRead
from dashboard.prometheus import PrometheusQueryError, PrometheusUnavailable
from dashboard.trace import Record, event_of, in_order, valid_question_id

# The metric names agreed for issue 9 (notes: common.md); the panels may use nothing else.
AGREED_METRICS = {
    "yahoo_questions_accepted_total",
    "yahoo_outcomes_total",
    "yahoo_end_to_end_seconds_bucket",
    "yahoo_llm_call_duration_seconds_bucket",
    "yahoo_llm_calls_total",
    "yahoo_retries_total",
    "yahoo_dead_letters_total",
    "yahoo_f1_score_bucket",
    "yahoo_attempts_per_question_bucket",
    "yahoo_regeneration_f1_bucket",
    "yahoo_kafka_consumer_lag",
    "yahoo_cache_requests_total",
    "yahoo_worker_last_poll_timestamp_seconds",
    "yahoo_flink_job_up",
}
QID = question_id_for("What is the capital of Chile?")
T0 = datetime(2026, 11, 26, 9, 0, 0, tzinfo=UTC)


# --- panels: PromQL built on the server ----------------------------------------------------------


def metric_names(promql: str) -> set[str]:
    return set(re.findall(r"\byahoo_\w+", promql))


def test_every_panel_queries_only_agreed_metrics():
    used = set()
    for panel in panels.PANELS:
        for query in panel.queries:
            assert metric_names(query.promql) <= AGREED_METRICS, (panel.name, query.promql)
            used |= metric_names(query.promql)
    used |= metric_names(panels.stalled_query(180)) | metric_names(panels.FLINK_JOB_DOWN_QUERY)
    assert used == AGREED_METRICS  # and each agreed metric the dashboard promised is shown


def test_the_issue_names_a_panel_for_each_chart():
    assert set(panels.PANELS_BY_NAME) == {
        "questions",
        "end_to_end",
        "llm_latency",
        "llm_calls",
        "retries",
        "f1",
        "attempts",
        "regeneration",
        "consumer_lag",
        "cache_hit_rate",
    }


def test_counters_are_per_minute_rates_and_latencies_quantiles():
    [accepted, completed] = panels.PANELS_BY_NAME["questions"].queries
    assert accepted.promql == "60 * sum by (outcome) (rate(yahoo_questions_accepted_total[1m]))"
    assert completed.promql == '60 * sum by (status) (rate(yahoo_outcomes_total{result="applied"}[1m]))'
    p50, p95 = panels.PANELS_BY_NAME["end_to_end"].queries
    assert p50.promql == "histogram_quantile(0.5, sum by (le) (rate(yahoo_end_to_end_seconds_bucket[5m])))"
    assert p95.promql.startswith("histogram_quantile(0.95,") and (p50.legend, p95.legend) == ("p50", "p95")


def test_histogram_panels_read_cumulative_buckets_by_their_group():
    for name, group in (("f1", "attempt"), ("attempts", "status"), ("regeneration", "stage")):
        panel = panels.PANELS_BY_NAME[name]
        [query] = panel.queries
        assert panel.kind == "histogram" and panel.group_by == group
        assert query.promql.startswith(f"sum by ({group}, le) (") and "_bucket" in query.promql
    assert panels.PANELS_BY_NAME["f1"].threshold and not panels.PANELS_BY_NAME["attempts"].threshold


def test_lag_is_shown_for_the_pipelines_own_groups_only():
    [lag] = panels.PANELS_BY_NAME["consumer_lag"].queries
    assert lag.promql == (
        'sum by (group) (yahoo_kafka_consumer_lag{group=~"llm-consumer|retry-overload-consumer|'
        'retry-quota-consumer|storage-service|flink-score-validator|score-validator-backup"})'
    )
    assert all(re.fullmatch(r"[a-z-]+", group) for group in panels.PIPELINE_GROUPS)  # nothing to escape


def test_cache_hit_ratio_counts_no_hit_as_zero():
    assert panels.hit_ratio(None) == (
        '(sum(yahoo_cache_requests_total{result="hit"}) or vector(0)) / sum(yahoo_cache_requests_total)'
    )
    assert "[5m]" in panels.hit_ratio("5m")


@pytest.mark.parametrize(("minutes", "step"), [(5, 5), (15, 5), (60, 15), (180, 45), (360, 90)])
def test_range_step_keeps_lines_under_the_point_budget(minutes, step):
    assert panels.range_step_s(minutes) == step
    assert minutes * 60 / step <= panels.MAX_POINTS


# --- panels: Prometheus' answers as chart data ---------------------------------------------------


def test_timeseries_names_lines_by_their_labels_and_turns_nan_into_gaps():
    query = panels.Query("x", "accepted: {outcome}")
    matrix = [
        {"metric": {"outcome": "published"}, "values": [[100, "1.5"], [105, "NaN"], [110, "+Inf"]]},
        {"metric": {"outcome": "cached"}, "values": [[100, "0"]]},
    ]
    series = panels.timeseries([(query, matrix)], step_s=5)
    assert series == [
        {"label": "accepted: cached", "points": [[100.0, 0.0]]},
        {"label": "accepted: published", "points": [[100.0, 1.5], [105.0, None], [110.0, None]]},
    ]
    assert panels.data_points({"series": series}) == 2


def test_missing_steps_break_the_line_instead_of_bridging_it():
    query = panels.Query("x", "{kind}")
    matrix = [{"metric": {"kind": "success"}, "values": [[100, "1"], [105, "2"], [150, "3"], [155, "4"]]}]
    [line] = panels.timeseries([(query, matrix)], step_s=5)
    assert line["points"] == [[100.0, 1.0], [105.0, 2.0], [110.0, None], [150.0, 3.0], [155.0, 4.0]]
    assert panels.data_points({"series": [line]}) == 4


def test_a_legend_without_its_label_loses_the_dangling_separator():
    assert panels.legend_for("completed: {status}", {}) == "completed"


def bucket(group: dict[str, str], le: str, value: float) -> dict[str, Any]:
    return {"metric": {**group, "le": le}, "value": [1700000000, str(value)]}


def test_histogram_turns_cumulative_buckets_into_counts_per_bucket():
    vector = [
        bucket({"attempt": "10"}, "0.5", 1),
        bucket({"attempt": "10"}, "1", 1),
        bucket({"attempt": "10"}, "+Inf", 1),
        bucket({"attempt": "2"}, "0.5", 2),
        bucket({"attempt": "2"}, "1", 5),
        bucket({"attempt": "2"}, "+Inf", 5),
        {"metric": {"attempt": "2"}, "value": [1700000000, "9"]},  # not a bucket: ignored
    ]
    chart = panels.histogram(panels.Query("q", "attempt {attempt}"), vector, "attempt")
    assert chart["bounds"] == [0.5, 1.0]  # +Inf held nothing: dropped
    assert chart["labels"] == ["≤ 0.5", "≤ 1"]
    assert chart["series"] == [  # attempts as numbers: 2 before 10
        {"label": "attempt 2", "counts": [2.0, 3.0]},
        {"label": "attempt 10", "counts": [1.0, 0.0]},
    ]
    assert panels.data_points(chart) == 6


def test_histogram_keeps_the_overflow_bucket_when_something_is_in_it():
    vector = [bucket({"status": "failed"}, "5", 1), bucket({"status": "failed"}, "+Inf", 3)]
    chart = panels.histogram(panels.Query("q", "{status}"), vector, "status")
    assert chart["bounds"] == [5.0, None] and chart["series"][0]["counts"] == [1.0, 2.0]


def test_no_series_is_no_data():
    chart = panels.histogram(panels.Query("q", "{stage}"), [], "stage")
    assert chart == {"bounds": [], "labels": [], "series": []} and panels.data_points(chart) == 0


def test_status_summary_names_down_targets_stalled_workers_and_a_stopped_job():
    up = [
        {"metric": {"job": "storage", "instance": "localhost:5001", "service": "storage"}, "value": [0, "1"]},
        {"metric": {"job": "llm-consumer", "instance": "localhost:9102", "service": "llm-consumer"}, "value": [0, "0"]},
    ]
    stalled = [{"metric": {"service": "retry-quota-consumer"}, "value": [0, "75.4"]}]
    summary = panels.status_summary(up, stalled, [{"metric": {}, "value": [0, "0"]}])
    assert [t["job"] for t in summary["targets"]] == ["llm-consumer", "storage"]
    assert summary["down"] == [
        {"job": "llm-consumer", "instance": "localhost:9102", "service": "llm-consumer", "up": False}
    ]
    assert summary["stalled"] == [{"service": "retry-quota-consumer", "idle_s": 75}]
    assert summary["flink_job_down"] is True
    assert panels.status_summary(up[:1], [], [])["down"] == []


# --- trace: question_id, events -------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["", "abc", QID.upper(), QID[:-1], QID + "0", "g" * 32, "../" + QID[3:], QID[:31] + " ", QID[:31] + "\n"]
)
def test_question_ids_have_one_shape(text):
    assert not valid_question_id(text)


def test_every_question_id_the_pipeline_makes_is_valid():
    assert all(valid_question_id(question_id_for(f"¿pregunta {i}?")) for i in range(50))


def message(**changes: Any) -> PipelineMessage:
    base = PipelineMessage(question_id=QID, question_text="What is the capital of Chile?", original_answer="Santiago")
    return base.model_copy(update=changes)


def record(topic: str, at: datetime, value: PipelineMessage | DeadLetter | bytes, offset: int = 0) -> Record:
    raw = value if isinstance(value, bytes) else value.to_bytes()
    return Record(topic, 1, offset, int(at.timestamp() * 1000), raw)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_validated_question_reads_in_pipeline_order_with_timings():
    score = Score(precision=0.9, recall=0.9, f1=0.91, model="m")
    answered = message(llm_answer="Santiago", llm_latency_ms=1500.0, updated_at=at(2.0))
    records = [
        # Flink's sink stamps its output with the input's timestamp: the answer's, 2.0 s; its own
        # updated_at (2.4 s) is the later, truer time.
        record(topics.VALIDATED_RESPONSES, at(2.0), message(score=score, updated_at=at(2.4)), offset=7),
        record(topics.LLM_RESPONSES_SUCCESS, at(2.0), answered, offset=5),
        record(topics.QUESTIONS_PENDING, at(0.0), message(updated_at=at(0.0)), offset=3),
        record(topics.LLM_REQUESTS, at(0.5), message(updated_at=at(0.5)), offset=4),
    ]
    events = in_order([event_of(r) for r in records])
    assert [e.topic for e in events] == [
        topics.QUESTIONS_PENDING,
        topics.LLM_REQUESTS,
        topics.LLM_RESPONSES_SUCCESS,
        topics.VALIDATED_RESPONSES,
    ]
    assert [e.since_first_s for e in events] == [0.0, 0.5, 2.0, 2.4]
    assert [e.since_previous_s for e in events] == [None, 0.5, 1.5, 0.4]
    assert [e.status for e in events] == ["pending", "pending", "pending", "validated"]
    assert events[-1].score == 0.91 and events[-1].kafka_time == at(2.0)
    assert events[2].detail == "LLM answered in 1.50 s"


def test_equal_times_fall_back_to_attempt_then_pipeline_step():
    same = at(1.0)
    records = [
        record(topics.LOW_QUALITY_RESPONSES, same, message(attempt=3, updated_at=same)),
        record(topics.LLM_RESPONSES_SUCCESS, same, message(attempt=3, updated_at=same)),
        record(topics.QUESTIONS_PENDING, same, message(attempt=3, updated_at=same)),
        record(topics.LLM_RESPONSES_SUCCESS, same, message(attempt=2, updated_at=same)),
    ]
    events = in_order([event_of(r) for r in records])
    assert [(e.attempt, e.topic) for e in events] == [
        (2, topics.LLM_RESPONSES_SUCCESS),
        (3, topics.QUESTIONS_PENDING),
        (3, topics.LLM_RESPONSES_SUCCESS),
        (3, topics.LOW_QUALITY_RESPONSES),
    ]
    assert all(e.since_previous_s in (None, 0.0) for e in events)


def test_retries_regenerations_errors_and_dead_letters_say_what_they_are():
    low = Score(precision=0.2, recall=0.2, f1=0.2, model="m")
    retry = record(topics.QUESTIONS_PENDING, at(1), message(retry_count=2, updated_at=at(1)))
    regenerate = record(topics.QUESTIONS_PENDING, at(2), message(attempt=2, score=low, updated_at=at(2)))
    overload = record(
        topics.ERRORS_OVERLOAD, at(3), message(error=LLMError(status=503, kind="overload"), updated_at=at(3))
    )
    letter = DeadLetter.wrap(b"{}", stage="storage-consumer", reason="handler failed", source_topic="x")
    dead = record(topics.DEAD_LETTER, at(4), letter.model_copy(update={"failed_at": at(4)}))
    events = [event_of(r) for r in (retry, regenerate, overload, dead)]
    assert [e.detail for e in events] == [
        "retry 2 of attempt 1",
        "regenerate: attempt 1 scored F1 0.200",
        "LLM overload (HTTP 503)",
        "storage-consumer: handler failed",
    ]
    assert events[1].score == 0.2 and events[3].status == "failed"


def test_bytes_that_are_no_message_are_still_an_event():
    [event] = in_order([event_of(record(topics.LLM_RESPONSES_SUCCESS, at(5), b"\xff not json"))])
    assert event.detail.startswith("undecodable") and event.time == at(5) and event.attempt is None


# --- the HTTP layer on fakes ---------------------------------------------------------------------


class FakePrometheus:
    def __init__(self) -> None:
        self.queries: list[str] = []
        self.failure: Exception | None = None

    def _answer(self, promql: str) -> list[dict[str, Any]]:
        self.queries.append(promql)
        if self.failure is not None:
            raise self.failure
        return []

    def query(self, promql: str) -> list[dict[str, Any]]:
        if promql == panels.UP_QUERY and self.failure is None:
            self.queries.append(promql)
            return [{"metric": {"job": "storage", "instance": "localhost:5001"}, "value": [0, "1"]}]
        return self._answer(promql)

    def query_range(self, promql: str, start: float, end: float, step_s: int) -> list[dict[str, Any]]:
        self._answer(promql)
        return [{"metric": {"outcome": "published"}, "values": [[start, "1"], [end, "2"]]}]


class FakeOutcomes:
    def __init__(self) -> None:
        self.down = False
        self.asked: dict[str, datetime] = {QID: T0}

    def _check(self) -> None:
        if self.down:
            raise psycopg.OperationalError("connection refused")

    def latest(self, limit: int) -> list[dict[str, Any]]:
        self._check()
        return [{"question_id": QID, "status": "validated", "completed_at": T0}][:limit]

    def asked_at(self, question_id: str):
        self._check()
        return (self.asked[question_id], "validated") if question_id in self.asked else None

    def ping(self) -> None:
        self._check()


class FakeTraceReader:
    def __init__(self) -> None:
        self.since: datetime | None = None

    def read(self, question_id: str, since: datetime) -> TraceRead:
        self.since = since
        return TraceRead(
            records=[
                record(topics.VALIDATED_RESPONSES, at(3), message(updated_at=at(3))),
                record(topics.QUESTIONS_PENDING, at(0), message(updated_at=at(0))),
            ],
            scanned=40,
        )


@pytest.fixture
def deps(tmp_path):
    settings = DashboardSettings.from_env({"QUALITY_THRESHOLD": "0.8", "DASHBOARD_ASSETS_DIR": str(tmp_path)})
    prometheus, outcomes, reader = FakePrometheus(), FakeOutcomes(), FakeTraceReader()
    app = create_app(settings, prometheus, outcomes, reader, clock=lambda: 1_700_000_000.0)
    return app.test_client(), prometheus, outcomes, reader, tmp_path


def assert_json_error(resp, status: int, error: str) -> None:
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:300])
    body = resp.get_json()
    assert body["error"] == error and body["message"], body
    assert "Traceback" not in resp.get_data(as_text=True)


def test_config_tells_the_page_its_panels_and_the_threshold(deps):
    client = deps[0]
    body = client.get("/api/config").get_json()
    assert [p["name"] for p in body["panels"]] == [p.name for p in panels.PANELS]
    assert body["quality_threshold"] == 0.8 and body["max_attempts"] == 3
    assert body["range_minutes"] == list(panels.RANGE_MINUTES)


def test_a_panel_sends_its_own_promql_whatever_the_request_carries(deps):
    client, prometheus = deps[0], deps[1]
    resp = client.get("/api/panels/questions?minutes=60&query=up&promql=drop_everything")
    assert resp.status_code == 200
    body = resp.get_json()
    assert prometheus.queries == [q.promql for q in panels.PANELS_BY_NAME["questions"].queries]
    assert body["step_s"] == 15 and body["end"] - body["start"] == 3600
    assert body["points"] == 4 and body["series"][0]["label"] == "accepted: published"


def test_a_histogram_panel_is_an_instant_query(deps):
    client, prometheus = deps[0], deps[1]
    body = client.get("/api/panels/f1").get_json()
    assert prometheus.queries == [panels.PANELS_BY_NAME["f1"].queries[0].promql]
    assert body["kind"] == "histogram" and body["points"] == 0


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/api/panels/no_such_panel", 404, "unknown_panel"),
        ("/api/panels/questions?minutes=7", 400, "invalid_minutes"),
        ("/api/panels/questions?minutes=lots", 400, "invalid_minutes"),
        ("/api/outcomes?limit=0", 400, "invalid_limit"),
        ("/api/outcomes?limit=101", 400, "invalid_limit"),
        ("/api/outcomes?limit=ten", 400, "invalid_limit"),
        (f"/api/trace/{QID.upper()}", 400, "invalid_question_id"),
        ("/api/trace/not-a-question", 400, "invalid_question_id"),
        (f"/api/trace/{QID}x", 400, "invalid_question_id"),
        (f"/api/trace/{question_id_for('never asked')}", 404, "not_found"),
        ("/api/trace/", 404, "not_found"),
        ("/api/trace/%00", 400, "invalid_url"),
        ("/api/nothing", 404, "not_found"),
    ],
)
def test_bad_input_is_a_4xx_json_answer(deps, path, status, error):
    assert_json_error(deps[0].get(path), status, error)


def test_methods_other_than_get_are_refused(deps):
    assert_json_error(deps[0].post("/api/panels/questions"), 405, "method_not_allowed")


def test_prometheus_away_is_a_503_for_panels_and_a_banner_for_status(deps):
    client, prometheus = deps[0], deps[1]
    prometheus.failure = PrometheusUnavailable("http://localhost:9090: ConnectionError")
    assert_json_error(client.get("/api/panels/end_to_end"), 503, "prometheus_unavailable")
    status = client.get("/api/status")
    assert status.status_code == 200
    assert status.get_json()["prometheus"]["reachable"] is False
    prometheus.failure = PrometheusQueryError("bad_data: parse error")
    assert_json_error(client.get("/api/panels/f1"), 502, "prometheus_query_failed")


def test_status_lists_the_targets(deps):
    body = deps[0].get("/api/status").get_json()
    assert body["prometheus"]["reachable"] is True
    assert body["targets"][0]["job"] == "storage" and body["down"] == [] and body["flink_job_down"] is False


def test_database_away_is_a_503(deps):
    client, outcomes = deps[0], deps[2]
    outcomes.down = True
    assert_json_error(client.get("/api/outcomes"), 503, "database_unavailable")
    assert_json_error(client.get(f"/api/trace/{QID}"), 503, "database_unavailable")
    assert_json_error(client.get("/health"), 503, "database_unavailable")


def test_a_trace_reads_from_before_the_question_and_orders_its_events(deps):
    client, reader = deps[0], deps[3]
    body = client.get(f"/api/trace/{QID}").get_json()
    assert reader.since == T0 - timedelta(seconds=60)
    assert [e["topic"] for e in body["events"]] == [topics.QUESTIONS_PENDING, topics.VALIDATED_RESPONSES]
    assert [e["since_previous_s"] for e in body["events"]] == [None, 3.0]
    assert body["events"][0]["time"] == "2026-11-26T09:00:00.000+00:00"
    assert body["scanned"] == 40 and body["partial"] is False and body["status"] == "validated"


def test_the_page_and_chart_js_are_served_locally_with_a_strict_policy(deps):
    client, tmp_path = deps[0], deps[4]
    page = client.get("/")
    assert page.status_code == 200 and b"/vendor/chart.umd.min.js" in page.data and b"https://" not in page.data
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert client.get("/static/dashboard.js").status_code == 200
    assert_json_error(client.get("/vendor/chart.umd.min.js"), 404, "not_installed")
    dist = tmp_path / "chart.js" / "dist"
    dist.mkdir(parents=True)
    (dist / "chart.umd.min.js").write_text("/* Chart.js */")
    assert client.get("/vendor/chart.umd.min.js").data == b"/* Chart.js */"
