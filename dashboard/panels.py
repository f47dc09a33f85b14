"""The dashboard's charts as a fixed set of named panels: the PromQL of each is built here, on the
server, from the metric names of common.md / common/metrics.py; the page only names a panel, so no
PromQL ever comes from a request. Also the pure shaping of Prometheus' answers into chart data."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from common import topics

PanelKind = Literal["timeseries", "histogram"]

# Counters are shown per minute over this window: wide enough for several scrapes whatever the
# scrape interval (5-15 s), short enough that a burst is visible as one.
RATE_WINDOW = "1m"
# Quantiles and ratios over a wider window: one slow call should not make the whole line jump.
QUANTILE_WINDOW = "5m"
PIPELINE_GROUPS = topics.PIPELINE_GROUPS  # lag is exported for these only (kafka_ui)
# The ranges the page offers (minutes), and how many points a line gets at most.
RANGE_MINUTES = (5, 15, 60, 180, 360)
MAX_POINTS = 240
MIN_STEP_S = 5


@dataclass(frozen=True)
class Query:
    promql: str
    # The series' name on the chart: "{label}" is replaced by that label's value.
    legend: str


@dataclass(frozen=True)
class Panel:
    name: str
    title: str
    kind: PanelKind
    unit: str
    queries: tuple[Query, ...]
    # Histograms: the label that tells the bars apart (attempt, stage, status).
    group_by: str = ""
    # Draw the QUALITY_THRESHOLD line (scores).
    threshold: bool = False
    help: str = ""


def per_minute(metric: str, by: str, selector: str = "") -> str:
    return f"60 * sum by ({by}) (rate({metric}{selector}[{RATE_WINDOW}]))"


def quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket[{QUANTILE_WINDOW}])))"


def hit_ratio(window: str | None) -> str:
    """Cache hits over all lookups; `or vector(0)`, so no hit at all is a ratio of 0, not no data."""
    if window is None:
        hits, total = 'sum(yahoo_cache_requests_total{result="hit"})', "sum(yahoo_cache_requests_total)"
    else:
        hits = f'sum(rate(yahoo_cache_requests_total{{result="hit"}}[{window}]))'
        total = f"sum(rate(yahoo_cache_requests_total[{window}]))"
    return f"({hits} or vector(0)) / {total}"


def buckets(metric: str, by: str) -> str:
    """A histogram's cumulative buckets since its process started (an instant query): unlike a
    rate, it shows the very first observation, which a quiet demo run needs."""
    return f"sum by ({by}, le) ({metric}_bucket)"


PANELS: tuple[Panel, ...] = (
    Panel(
        "questions",
        "Questions per minute",
        "timeseries",
        "per min",
        (
            Query(per_minute("yahoo_questions_accepted_total", "outcome"), "accepted: {outcome}"),
            Query(per_minute("yahoo_outcomes_total", "status", '{result="applied"}'), "completed: {status}"),
        ),
        help="POST /query answers by outcome; terminal outcomes applied by storage, by status",
    ),
    Panel(
        "end_to_end",
        "End-to-end latency",
        "timeseries",
        "s",
        (
            Query(quantile(0.5, "yahoo_end_to_end_seconds"), "p50"),
            Query(quantile(0.95, "yahoo_end_to_end_seconds"), "p95"),
        ),
        help=f"POST /query to the applied terminal outcome, over {QUANTILE_WINDOW}",
    ),
    Panel(
        "llm_latency",
        "LLM call latency",
        "timeseries",
        "s",
        (
            Query(quantile(0.5, "yahoo_llm_call_duration_seconds"), "p50"),
            Query(quantile(0.95, "yahoo_llm_call_duration_seconds"), "p95"),
        ),
        help=f"every LLM call, answered or failed, over {QUANTILE_WINDOW}",
    ),
    Panel(
        "llm_calls",
        "LLM calls per minute by kind",
        "timeseries",
        "per min",
        (Query(per_minute("yahoo_llm_calls_total", "kind"), "{kind}"),),
        help="success, or the failure kind: overload (503, timeout), quota (429), error",
    ),
    Panel(
        "retries",
        "Retries and dead letters per minute",
        "timeseries",
        "per min",
        (
            Query(per_minute("yahoo_retries_total", "kind"), "retry: {kind}"),
            Query(per_minute("yahoo_dead_letters_total", "stage"), "dead letter: {stage}"),
        ),
        help="messages scheduled by the retry consumers; messages sent to dead-letter, by stage",
    ),
    Panel(
        "f1",
        "F1 per attempt",
        "histogram",
        "answers",
        (Query(buckets("yahoo_f1_score", "attempt"), "attempt {attempt}"),),
        group_by="attempt",
        threshold=True,
        help="every scored attempt of the applied outcomes, since the storage consumer started",
    ),
    Panel(
        "attempts",
        "Attempts per question",
        "histogram",
        "questions",
        (Query(buckets("yahoo_attempts_per_question", "status"), "{status}"),),
        group_by="status",
        help="LLM answers a terminal question took, by status",
    ),
    Panel(
        "regeneration",
        "Score before vs after regeneration",
        "histogram",
        "questions",
        (Query(buckets("yahoo_regeneration_f1", "stage"), "{stage} attempt"),),
        group_by="stage",
        threshold=True,
        help="questions answered more than once: the first attempt's F1 and the final best F1",
    ),
    Panel(
        "consumer_lag",
        "Consumer lag per group",
        "timeseries",
        "messages",
        (Query(f'sum by (group) (yahoo_kafka_consumer_lag{{group=~"{"|".join(PIPELINE_GROUPS)}"}})', "{group}"),),
        help="the pipeline's groups: end offsets minus committed offsets, over every topic and partition",
    ),
    Panel(
        "cache_hit_rate",
        "Cache hit rate",
        "timeseries",
        "ratio",
        (Query(hit_ratio(QUANTILE_WINDOW), f"last {QUANTILE_WINDOW}"), Query(hit_ratio(None), "since start")),
        help="storage's Redis answer cache on POST /query",
    ),
)
PANELS_BY_NAME = {panel.name: panel for panel in PANELS}

# The banner: targets down, workers whose loop stopped turning, the Flink job not running.
UP_QUERY = "up"


def stalled_query(stall_after_s: float) -> str:
    """Workers whose poll loop did not turn for `stall_after_s` (their liveness gauge)."""
    return f"time() - yahoo_worker_last_poll_timestamp_seconds > {stall_after_s:g}"


FLINK_JOB_DOWN_QUERY = "yahoo_flink_job_up == 0"


def range_step_s(minutes: int) -> int:
    """The step of a range query: at most MAX_POINTS points per line, never below MIN_STEP_S."""
    return max(MIN_STEP_S, math.ceil(minutes * 60 / MAX_POINTS))


def legend_for(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: labels.get(m.group(1), ""), template).strip(" :")


def sample_value(text: str) -> float | None:
    """A Prometheus sample ("0.5", "NaN", "+Inf") as a number for JSON; NaN and infinities are gaps."""
    value = float(text)
    return value if math.isfinite(value) else None


def with_gaps(points: list[list[Any]], step_s: float) -> list[list[Any]]:
    """A range query leaves out the steps where a series had no sample (a target down, Prometheus
    stopped); a null there breaks the line, where the chart would otherwise draw straight across."""
    filled: list[list[Any]] = []
    for point in points:
        if filled and point[0] - filled[-1][0] > 1.5 * step_s:
            filled.append([filled[-1][0] + step_s, None])
        filled.append(point)
    return filled


def timeseries(results: list[tuple[Query, list[dict[str, Any]]]], step_s: float) -> list[dict[str, Any]]:
    """Range-query answers (a matrix per query) as chart lines: [{label, points: [[t, v|None], ...]}]."""
    series = []
    for query, matrix in results:
        for item in matrix:
            points = [[float(t), sample_value(v)] for t, v in item.get("values", [])]
            series.append(
                {"label": legend_for(query.legend, item.get("metric", {})), "points": with_gaps(points, step_s)}
            )
    return sorted(series, key=lambda s: s["label"])


def bound(le: str) -> float:
    return float("inf") if le in ("+Inf", "Inf") else float(le)


def bucket_label(le: float) -> str:
    return "> last" if math.isinf(le) else f"≤ {le:g}"


def histogram(query: Query, vector: list[dict[str, Any]], group_by: str) -> dict[str, Any]:
    """Cumulative `le` buckets (an instant vector) as bars: the count in each bucket per group.

    {"bounds": [upper bounds], "labels": [...], "series": [{label, counts}]}; the +Inf bucket is kept
    only when something is in it.
    """
    cumulative: dict[str, dict[float, float]] = {}
    legends: dict[str, str] = {}
    for item in vector:
        labels = item.get("metric", {})
        if "le" not in labels:
            continue
        group = labels.get(group_by, "")
        legends[group] = legend_for(query.legend, labels)
        value = sample_value(item["value"][1])
        cumulative.setdefault(group, {})[bound(labels["le"])] = value or 0.0
    bounds = sorted({le for per_group in cumulative.values() for le in per_group})
    series = []
    for group in sorted(cumulative, key=_natural):
        counts, previous = [], 0.0
        for le in bounds:
            total = cumulative[group].get(le, previous)  # a bucket a group lacks holds nothing new
            counts.append(max(0.0, total - previous))
            previous = max(previous, total)
        series.append({"label": legends[group], "counts": counts})
    if bounds and math.isinf(bounds[-1]) and all(s["counts"][-1] == 0 for s in series):
        bounds = bounds[:-1]
        for s in series:
            s["counts"] = s["counts"][:-1]
    return {
        "bounds": [None if math.isinf(b) else b for b in bounds],
        "labels": [bucket_label(b) for b in bounds],
        "series": series,
    }


def _natural(text: str) -> tuple[int, float | str]:
    """Groups in a readable order: attempts 1, 2, 10 as numbers; words (first, final) as words."""
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


def data_points(chart: dict[str, Any]) -> int:
    """How much a chart shows: non-empty samples of its lines, or observations in its bars."""
    if "series" not in chart:
        return 0
    total = 0
    for series in chart["series"]:
        if "points" in series:
            total += sum(1 for _, value in series["points"] if value is not None)
        else:
            total += int(sum(series["counts"]))
    return total


def status_summary(
    up: list[dict[str, Any]], stalled: list[dict[str, Any]], flink_down: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the banner says: every scrape target with its state, the ones down, stalled workers."""
    targets = sorted(
        (
            {
                "job": item["metric"].get("job", ""),
                "instance": item["metric"].get("instance", ""),
                "service": item["metric"].get("service", item["metric"].get("job", "")),
                "up": sample_value(item["value"][1]) == 1,
            }
            for item in up
        ),
        key=lambda t: (t["job"], t["instance"]),
    )
    return {
        "targets": targets,
        "down": [t for t in targets if not t["up"]],
        "stalled": sorted(
            (
                {"service": item["metric"].get("service", "?"), "idle_s": round(sample_value(item["value"][1]) or 0)}
                for item in stalled
            ),
            key=lambda s: s["service"],
        ),
        "flink_job_down": bool(flink_down),
    }
