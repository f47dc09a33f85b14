"""The dashboard's HTTP API and page: GET / (the page), GET /api/... (what the page polls), GET /health.

The page has one origin: chart data is proxied from Prometheus (named panels only, PromQL built in
dashboard/panels.py), outcomes come from PostgreSQL, traces from Kafka.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import psycopg
from confluent_kafka import KafkaException
from flask import Flask, Response, jsonify, request, send_from_directory

from common.web import ApiError, configure_json_api
from dashboard import panels
from dashboard.config import DashboardSettings
from dashboard.kafka_trace import TraceRead
from dashboard.prometheus import PrometheusQueryError, PrometheusUnavailable
from dashboard.trace import event_of, in_order, valid_question_id

STATIC = Path(__file__).resolve().parent / "static"
CHART_JS = Path("chart.js") / "dist" / "chart.umd.min.js"
MAX_OUTCOMES = 100
# Everything the page loads comes from here: no CDN, no inline script or style.
CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'"


class Prometheus(Protocol):
    def query(self, promql: str) -> list[dict[str, Any]]: ...
    def query_range(self, promql: str, start: float, end: float, step_s: int) -> list[dict[str, Any]]: ...


class Outcomes(Protocol):
    def latest(self, limit: int) -> list[dict[str, Any]]: ...
    def asked_at(self, question_id: str) -> Any: ...
    def ping(self) -> None: ...


class TraceReader(Protocol):
    def read(self, question_id: str, since: Any) -> TraceRead: ...


def int_arg(name: str, default: int, allowed: range | tuple[int, ...]) -> int:
    """A whole-number query parameter within `allowed`, or a 400."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"invalid_{name}", f"'{name}' must be a whole number") from None
    if value not in allowed:
        shown = f"{allowed.start}..{allowed.stop - 1}" if isinstance(allowed, range) else ", ".join(map(str, allowed))
        raise ApiError(400, f"invalid_{name}", f"'{name}' must be one of {shown}")
    return value


def panel_data(prometheus: Prometheus, panel: panels.Panel, minutes: int, now: float) -> dict[str, Any]:
    """One panel's chart data, from Prometheus."""
    chart: dict[str, Any]
    if panel.kind == "histogram":
        [query] = panel.queries
        chart = panels.histogram(query, prometheus.query(query.promql), panel.group_by)
    else:
        step = panels.range_step_s(minutes)
        start = now - minutes * 60
        chart = {
            "series": panels.timeseries(
                [(q, prometheus.query_range(q.promql, start, now, step)) for q in panel.queries], step
            ),
            "start": start,
            "end": now,
            "step_s": step,
        }
    return {"name": panel.name, "kind": panel.kind, "unit": panel.unit, **chart, "points": panels.data_points(chart)}


def create_app(
    settings: DashboardSettings,
    prometheus: Prometheus,
    outcomes: Outcomes,
    trace_reader: TraceReader,
    clock=time.time,
) -> Flask:
    app = Flask("dashboard", static_folder=str(STATIC), static_url_path="/static")
    configure_json_api(app)
    assets = Path(settings.dashboard_assets_dir)

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(PrometheusUnavailable)
    def _prometheus_down(exc: PrometheusUnavailable):
        return jsonify(error="prometheus_unavailable", message=str(exc)), 503

    @app.errorhandler(PrometheusQueryError)
    def _prometheus_refused(exc: PrometheusQueryError):
        return jsonify(error="prometheus_query_failed", message=str(exc)), 502

    @app.errorhandler(psycopg.OperationalError)
    def _database_down(exc: psycopg.OperationalError):
        return jsonify(error="database_unavailable", message="PostgreSQL does not answer"), 503

    @app.errorhandler(KafkaException)
    def _kafka_down(exc: KafkaException):
        return jsonify(error="kafka_unavailable", message=str(exc)[:500]), 503

    @app.get("/")
    def index():
        return send_from_directory(STATIC, "index.html")

    @app.get("/vendor/chart.umd.min.js")
    def chart_js():
        if not (assets / CHART_JS).is_file():
            raise ApiError(404, "not_installed", "Chart.js is not installed: npm ci --prefix dashboard")
        return send_from_directory(assets / CHART_JS.parent, CHART_JS.name)

    @app.get("/api/config")
    def config():
        return jsonify(
            panels=[
                {
                    "name": p.name,
                    "title": p.title,
                    "kind": p.kind,
                    "unit": p.unit,
                    "threshold": p.threshold,
                    "help": p.help,
                }
                for p in panels.PANELS
            ],
            quality_threshold=settings.quality_threshold,
            max_attempts=settings.max_attempts,
            refresh_s=settings.dashboard_refresh_s,
            range_minutes=list(panels.RANGE_MINUTES),
            prometheus_url=settings.prometheus_url,
        )

    @app.get("/api/panels/<name>")
    def panel(name: str):
        found = panels.PANELS_BY_NAME.get(name)
        if found is None:
            raise ApiError(404, "unknown_panel", f"no panel named {name[:100]!r}")
        minutes = int_arg("minutes", 15, panels.RANGE_MINUTES)
        return jsonify(panel_data(prometheus, found, minutes, clock()))

    @app.get("/api/status")
    def status():
        """Prometheus reachable or not, targets down, stalled workers: the page's banner."""
        try:
            summary = panels.status_summary(
                prometheus.query(panels.UP_QUERY),
                prometheus.query(panels.stalled_query(settings.dashboard_stall_after_s)),
                prometheus.query(panels.FLINK_JOB_DOWN_QUERY),
            )
        except (PrometheusUnavailable, PrometheusQueryError) as exc:
            return jsonify(prometheus={"reachable": False, "url": settings.prometheus_url, "error": str(exc)})
        return jsonify(prometheus={"reachable": True, "url": settings.prometheus_url}, **summary)

    @app.get("/api/outcomes")
    def latest_outcomes():
        limit = int_arg("limit", 20, range(1, MAX_OUTCOMES + 1))
        return jsonify(outcomes=outcomes.latest(limit))

    @app.get("/api/trace/<question_id>")
    def trace(question_id: str):
        if not valid_question_id(question_id):
            raise ApiError(400, "invalid_question_id", "a question_id is 32 lowercase hex digits")
        asked = outcomes.asked_at(question_id)
        if asked is None:
            raise ApiError(404, "not_found", f"no question with id {question_id}")
        created_at, question_status = asked
        since = created_at - timedelta(seconds=settings.trace_margin_s)
        read = trace_reader.read(question_id, since)
        events = in_order([event_of(record) for record in read.records])
        return jsonify(
            question_id=question_id,
            status=question_status,
            created_at=created_at,
            read_from=since,
            events=[event.to_dict() for event in events],
            scanned=read.scanned,
            partial=read.partial,
            missing_topics=read.missing_topics,
        )

    @app.get("/health")
    def health():
        outcomes.ping()  # PostgreSQL away: 503 (outcomes and traces need it); Prometheus is the banner's
        return jsonify(status="healthy", service="dashboard")

    return app
