"""Every Prometheus metric of the pipeline (all `yahoo_*`), the helpers that record them, and the
worker's metrics port. One module owns the names: the dashboard, the Prometheus configuration, the
Grafana dashboard and the tests build on them (docs/DESIGN.md, "Observability").

Each process keeps its own values in prometheus_client's default registry (gunicorn runs one worker
per HTTP service, so its registry is the service's). HTTP services serve them at
GET /metrics/prometheus (common.web); a background worker, which has no HTTP server of its own,
serves them on BIND_HOST:METRICS_PORT (`serve_worker_metrics`). Labels are bounded sets (kinds,
statuses, stages, topics, route rules): never a question_id or free text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common import topics
from common.policy import FailureKind

if TYPE_CHECKING:
    from common.messages import PipelineMessage
    from common.settings import ServiceSettings

log = logging.getLogger(__name__)

# No `*_created` series beside every counter and histogram: nothing here reads them.
disable_created_metrics()

F1_BUCKETS = tuple(round(i * 0.05, 2) for i in range(21))  # 0.0, 0.05, ..., 1.0
ATTEMPT_BUCKETS = (1, 2, 3, 4, 5)
LLM_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 180, 300)
END_TO_END_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1800, 3600)
SCORE_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SCORE_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# -- HTTP services (common.web) -------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "yahoo_http_requests", "HTTP requests answered, by route rule", ["service", "route", "method", "status"]
)
HTTP_REQUEST_SECONDS = Histogram(
    "yahoo_http_request_duration_seconds", "Time to answer an HTTP request, by route rule", ["service", "route"]
)
UNMATCHED_ROUTE = "<unmatched>"  # the route label of a request no rule matched (404, 405)

# -- storage_service: the front door ---------------------------------------------------------------
CACHE_REQUESTS = Counter("yahoo_cache_requests", "Redis answer-cache lookups of POST /query (hit or miss)", ["result"])
QUESTIONS_ACCEPTED = Counter(
    "yahoo_questions_accepted",
    "POST /query answers by outcome: cached, stored (validated, from the database), published, pending, "
    "rejected (4xx), unavailable (503: Kafka or PostgreSQL away)",
    ["outcome"],
)
QUESTIONS_PUBLISHED = Counter("yahoo_questions_published", "Questions produced to questions-pending")

# -- storage_service: terminal outcomes ------------------------------------------------------------
OUTCOMES = Counter(
    "yahoo_outcomes", "Terminal outcomes consumed by storage, by status and result", ["status", "result"]
)
DUPLICATE_OUTCOMES = Counter("yahoo_duplicate_outcomes", "Terminal outcomes of a run that had already ended")
F1_SCORE = Histogram(
    "yahoo_f1_score", "F1 of every scored attempt of an applied terminal outcome", ["attempt"], buckets=F1_BUCKETS
)
REGENERATION_F1 = Histogram(
    "yahoo_regeneration_f1",
    "Regenerated questions: F1 of the first attempt (stage=first) and the best F1 at the end (stage=final)",
    ["stage"],
    buckets=F1_BUCKETS,
)
ATTEMPTS_PER_QUESTION = Histogram(
    "yahoo_attempts_per_question", "Attempts of an applied terminal outcome", ["status"], buckets=ATTEMPT_BUCKETS
)
END_TO_END_SECONDS = Histogram(
    "yahoo_end_to_end_seconds",
    "From POST /query (the run's start) to its applied terminal outcome",
    ["status"],
    buckets=END_TO_END_BUCKETS,
)
FLINK_JOB_UP = "yahoo_flink_job_up"  # computed at scrape time (flink_job_up_collector)

# -- llm_consumer and the retry consumers ----------------------------------------------------------
LLM_CALLS = Counter("yahoo_llm_calls", "LLM calls by result: success, overload, quota, error", ["kind"])
LLM_CALL_SECONDS = Histogram(
    "yahoo_llm_call_duration_seconds", "LLM call latency by result", ["kind"], buckets=LLM_SECONDS_BUCKETS
)
LLM_TOKENS = Counter("yahoo_llm_tokens", "Tokens the LLM reported: prompt and completion", ["direction"])
LLM_CALLS_SKIPPED = Counter("yahoo_llm_calls_skipped", "LLM calls skipped by the call ledger", ["reason"])
RETRIES = Counter("yahoo_retries", "Questions re-published after a failed LLM call", ["kind", "retry_count"])

# -- every consumer (common.kafka.ConsumerRunner) --------------------------------------------------
CONSUMER_MESSAGES = Counter(
    "yahoo_consumer_messages", "Messages processed and committed, by source topic", ["service", "topic"]
)
CONSUMER_OUTAGES = Counter(
    "yahoo_consumer_outages", "Waits for an unavailable dependency (broker, database)", ["service"]
)
CONSUMER_HANDLER_FAILURES = Counter(
    "yahoo_consumer_handler_failures", "A handler raised on a message (it is retried, then dead-lettered)", ["service"]
)
CONSUMER_REBUILDS = Counter(
    "yahoo_consumer_rebuilds", "Kafka clients rebuilt after falling out of their group", ["service"]
)
DEAD_LETTERS = Counter(
    "yahoo_dead_letters", "Messages sent to the dead-letter topic, by stage and reason category", ["stage", "reason"]
)
CONSUMER_IN_FLIGHT = Gauge(
    "yahoo_consumer_in_flight", "Messages whose handler (an LLM call) is running now", ["service"]
)
LLM_CONCURRENCY_LIMIT = Gauge(
    "yahoo_llm_concurrency_limit", "LLM calls an llm_consumer may have in flight now (adaptive)", ["service"]
)
WORKER_LAST_POLL = Gauge(
    "yahoo_worker_last_poll_timestamp_seconds", "Unix time of the poll loop's last turn (liveness)", ["service"]
)

# -- score_validator -------------------------------------------------------------------------------
SCORE_REQUESTS = Counter("yahoo_score_requests", "Score requests by outcome: ok, rejected, error", ["outcome"])
SCORE_SECONDS = Histogram(
    "yahoo_score_duration_seconds", "Time to score one request (queue and model call)", buckets=SCORE_SECONDS_BUCKETS
)
SCORE_BATCH_SIZE = Histogram(
    "yahoo_score_batch_size", "Pairs per model call (concurrent requests coalesced)", buckets=SCORE_BATCH_BUCKETS
)
SCORE_REFERENCE_CACHE = Counter(
    "yahoo_score_reference_cache", "Reference-embedding cache lookups, one per reference per batch", ["result"]
)

# -- kafka_ui (computed at scrape time) ------------------------------------------------------------
KAFKA_CONSUMER_LAG = "yahoo_kafka_consumer_lag"
KAFKA_CONSUMER_GROUP_MEMBERS = "yahoo_kafka_consumer_group_members"

# -- flink_job.watchdog ----------------------------------------------------------------------------
FLINK_JOB_RESUBMISSIONS = Counter(
    "yahoo_flink_job_resubmissions", "Score-job submissions by the watchdog, by result", ["result"]
)


# ---------------------------------------------------------------------------------------------------
# Recording helpers: one line at the place each fact happens.


def observe_http_request(service: str, route: str, method: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(service, route, method, str(status)).inc()
    HTTP_REQUEST_SECONDS.labels(service, route).observe(seconds)


def observe_llm_call(
    kind: str, seconds: float, prompt_tokens: int | None = None, completion_tokens: int | None = None
) -> None:
    LLM_CALLS.labels(kind).inc()
    LLM_CALL_SECONDS.labels(kind).observe(seconds)
    if prompt_tokens:
        LLM_TOKENS.labels("prompt").inc(prompt_tokens)
    if completion_tokens:
        LLM_TOKENS.labels("completion").inc(completion_tokens)


def observe_retry(kind: str, retry_count: int) -> None:
    RETRIES.labels(kind, str(retry_count)).inc()


def observe_outcome(status: str, result: str) -> None:
    OUTCOMES.labels(status, result).inc()
    if result == "duplicate":
        DUPLICATE_OUTCOMES.inc()


def observe_applied_outcome(message: PipelineMessage, status: str, now: datetime) -> None:
    """The figures of a terminal outcome that was applied: its scores, attempts and time taken.

    Only applied outcomes: a duplicate or an older run's outcome would count the question twice.
    """
    history = message.score_history
    for record in history:
        F1_SCORE.labels(str(record.attempt)).observe(record.f1)
    if len(history) > 1:
        REGENERATION_F1.labels("first").observe(min(history, key=lambda r: r.attempt).f1)
        REGENERATION_F1.labels("final").observe(max(r.f1 for r in history))
    # As storage counts them: the scored attempts, or for a failure the attempt it failed in.
    attempts = message.attempt if status == "failed" or not history else len(history)
    ATTEMPTS_PER_QUESTION.labels(status).observe(attempts)
    END_TO_END_SECONDS.labels(status).observe(max(0.0, (now - message.created_at).total_seconds()))


# ---------------------------------------------------------------------------------------------------
# Series that start at 0. Prometheus's rate() and increase() need a sample before a counter's first
# event: a series born at 1 hides that event (one retry would chart as none). So each process
# creates, at start, the label sets it will count.

LLM_CALL_KINDS = ("success", *(kind.value for kind in FailureKind))
ACCEPTED_OUTCOMES = ("cached", "stored", "published", "pending", "rejected", "unavailable")
TERMINAL_STATUSES = tuple(sorted(status.value for status in topics.TERMINAL_STATUSES))
OUTCOME_RESULTS_COUNTED = ("applied", "duplicate")


def start_at_zero(metric: Counter | Histogram, label_sets: Iterable[tuple[str, ...]]) -> None:
    for labels in label_sets:
        metric.labels(*labels)


def start_llm_consumer_series(skip_reasons: Iterable[str]) -> None:
    start_at_zero(LLM_CALLS, [(kind,) for kind in LLM_CALL_KINDS])
    start_at_zero(LLM_CALL_SECONDS, [(kind,) for kind in LLM_CALL_KINDS])
    start_at_zero(LLM_CALLS_SKIPPED, [(reason,) for reason in skip_reasons])


def start_retry_series(kind: str, max_retries: int) -> None:
    start_at_zero(RETRIES, [(kind, str(count)) for count in range(1, max_retries + 1)])


def start_storage_api_series() -> None:
    start_at_zero(CACHE_REQUESTS, [("hit",), ("miss",)])
    start_at_zero(QUESTIONS_ACCEPTED, [(outcome,) for outcome in ACCEPTED_OUTCOMES])


def start_outcome_series(max_attempts: int) -> None:
    start_at_zero(OUTCOMES, [(status, result) for status in TERMINAL_STATUSES for result in OUTCOME_RESULTS_COUNTED])
    for histogram in (ATTEMPTS_PER_QUESTION, END_TO_END_SECONDS):
        start_at_zero(histogram, [(status,) for status in TERMINAL_STATUSES])
    start_at_zero(REGENERATION_F1, [("first",), ("final",)])
    start_at_zero(F1_SCORE, [(str(attempt),) for attempt in range(1, max_attempts + 1)])


def start_consumer_series(service: str, source_topics: Iterable[str], dead_letter_reasons: Iterable[str]) -> None:
    for counter in (CONSUMER_OUTAGES, CONSUMER_HANDLER_FAILURES, CONSUMER_REBUILDS):
        counter.labels(service)
    start_at_zero(CONSUMER_MESSAGES, [(service, topic) for topic in source_topics])
    start_at_zero(DEAD_LETTERS, [(service, reason) for reason in dead_letter_reasons])


def mark_poll(service: str) -> None:
    WORKER_LAST_POLL.labels(service).set(time.time())


# ---------------------------------------------------------------------------------------------------
# Values read at scrape time (one collector per app, in that app's own registry: common.web).

GaugeSamples = Callable[[], Iterable[tuple[tuple[str, ...], float]]]


class BoundedRead:
    """One gauge's reads at scrape time: each answers within a deadline or raises TimeoutError (the
    read then finishes in the background, bounded by its own timeouts), and a read still running
    from an earlier scrape is not started again: a dependency that hangs would otherwise gather a
    thread (and a Kafka client) per scrape."""

    def __init__(self, read: GaugeSamples) -> None:
        self.read = read
        self._lock = threading.Lock()
        self._running: threading.Thread | None = None

    def __call__(self, timeout_s: float) -> list[tuple[tuple[str, ...], float]]:
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["samples"] = list(self.read())
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                outcome["error"] = exc

        with self._lock:
            if self._running is not None and self._running.is_alive():
                raise TimeoutError("the read of an earlier scrape has not finished")
            worker = self._running = threading.Thread(target=run, name="metrics-read", daemon=True)
            worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            raise TimeoutError(f"no answer within {timeout_s}s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["samples"]


class GaugesAtScrape(Collector):
    """Gauges whose (labels, value) samples are read when Prometheus scrapes, all reads within
    `timeout_s` (under Prometheus's scrape timeout); a failing or slow read yields no samples (the
    dashboard shows the gap) instead of failing the whole scrape."""

    def __init__(self, gauges: dict[str, tuple[str, list[str], GaugeSamples]], timeout_s: float = 3.0) -> None:
        self.gauges = gauges  # name -> (help, label names, read)
        self.timeout_s = timeout_s
        self._reads = {name: BoundedRead(read) for name, (_help, _labels, read) in gauges.items()}

    def describe(self) -> Iterator[GaugeMetricFamily]:
        for name, (help_text, labels, _read) in self.gauges.items():
            yield GaugeMetricFamily(name, help_text, labels=labels)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        deadline = time.monotonic() + self.timeout_s  # for all the reads together
        for name, (help_text, labels, _read) in self.gauges.items():
            family = GaugeMetricFamily(name, help_text, labels=labels)
            try:
                for label_values, value in self._reads[name](max(0.0, deadline - time.monotonic())):
                    family.add_metric(list(label_values), value)
            except Exception as exc:  # noqa: BLE001 - a broker or REST API away must not fail the scrape
                log.warning("metric not readable at scrape time", extra={"metric": name, "error": str(exc)[:300]})
            yield family


def flink_job_up_collector(running: Callable[[], bool]) -> GaugesAtScrape:
    """yahoo_flink_job_up: 1 while the score job runs (storage's cached Flink job check)."""
    return GaugesAtScrape(
        {FLINK_JOB_UP: ("1 while the Flink score job is running", [], lambda: [((), 1.0 if running() else 0.0)])}
    )


def kafka_lag_collector(
    lags: Callable[[], Iterable[tuple[str, str, int, int]]], members: Callable[[], Iterable[tuple[str, int]]]
) -> GaugesAtScrape:
    """Consumer lag per (group, topic, partition) and members per group, read when scraped."""
    return GaugesAtScrape(
        {
            KAFKA_CONSUMER_LAG: (
                "End offset minus committed offset, per consumer group and partition",
                ["group", "topic", "partition"],
                lambda: [((g, t, str(p)), float(lag)) for g, t, p, lag in lags()],
            ),
            KAFKA_CONSUMER_GROUP_MEMBERS: (
                "Members of each consumer group",
                ["group"],
                lambda: [((g,), float(n)) for g, n in members()],
            ),
        }
    )


# ---------------------------------------------------------------------------------------------------
# A worker's metrics port.


def serve_worker_metrics(settings: ServiceSettings) -> str | None:
    """Serve this process's metrics on BIND_HOST:METRICS_PORT (a daemon thread) when METRICS_PORT is
    set; returns the URL, or None when it is not set. Any path answers; Prometheus scrapes /metrics."""
    if settings.metrics_port is None:
        return None
    try:
        start_http_server(settings.metrics_port, addr=settings.bind_host)
    except OSError as exc:
        # A port taken (a leftover process, a foreign listener) must not stop the worker: it keeps
        # consuming, and Prometheus shows its target down.
        log.error(
            "cannot serve Prometheus metrics; the worker runs without them",
            extra={"port": settings.metrics_port, "bind_host": settings.bind_host, "error": str(exc)},
        )
        return None
    host = f"[{settings.bind_host}]" if ":" in settings.bind_host else settings.bind_host
    url = f"http://{host}:{settings.metrics_port}/metrics"
    log.info("serving Prometheus metrics", extra={"url": url})
    return url
