"""What the HTTP services share: JSON errors (never a stack trace), body validation, the OpenAPI
description, Prometheus metrics (GET /metrics/prometheus, every request counted and timed by its
route rule), gunicorn on a loopback address by default."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any

from flask import Flask, Request, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.registry import Collector
from werkzeug.exceptions import HTTPException

from common.metrics import UNMATCHED_ROUTE, observe_http_request
from common.settings import StackSettings

log = logging.getLogger(__name__)

# The APIs' own bodies nest three levels at most; deeper ones are refused before anything walks them.
MAX_JSON_DEPTH = 32
# Kept in the repository (docs/openapi/<service>.json) and served at GET /openapi.json.
OPENAPI_DIR = Path(__file__).resolve().parent.parent / "docs" / "openapi"


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def _refuse_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def unsafe_text_reason(text: str) -> str | None:
    """Why `text` cannot be stored or sent on (PostgreSQL refuses NUL; UTF-8 has no lone surrogates)."""
    if "\x00" in text:
        return "a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone UTF-16 surrogate"
    return None


def json_problem(value: Any, max_depth: int = MAX_JSON_DEPTH) -> ApiError | None:
    """The first reason a parsed JSON value is refused (too deep, unsafe text), or None.

    Walks iteratively, so a value of any depth is checked without recursion.
    """
    pending: list[tuple[Any, int, str]] = [(value, 1, "body")]
    while pending:
        item, depth, where = pending.pop()
        if isinstance(item, (dict, list)) and depth > max_depth:
            return ApiError(400, "too_deep", f"JSON nested deeper than {max_depth} levels")
        if isinstance(item, dict):
            for key, child in item.items():
                if reason := unsafe_text_reason(key):
                    return ApiError(400, "invalid_text", f"a key in {where} contains {reason}")
                pending.append((child, depth + 1, f"{where}.{key}"))
        elif isinstance(item, list):
            pending.extend((child, depth + 1, f"{where}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, str) and (reason := unsafe_text_reason(item)):
            return ApiError(400, "invalid_text", f"{where} contains {reason}")
    return None


def json_body(
    request: Request, max_bytes: int, *, require_json_type: bool = True, max_depth: int = MAX_JSON_DEPTH
) -> dict[str, Any]:
    """The request's JSON object, or an ApiError with the right status (413, 415, 400).

    `require_json_type=False` parses the body whatever its Content-Type, as Ollama's API does.
    Refused with 400: malformed JSON (NaN and Infinity included), not an object, nested deeper than
    `max_depth`, or any string holding a NUL character or a lone surrogate.
    """
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "payload_too_large", f"request body over {max_bytes} bytes")
    if require_json_type and not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
    raw = request.get_data(cache=True)
    if len(raw) > max_bytes:
        raise ApiError(413, "payload_too_large", f"request body over {max_bytes} bytes")
    try:
        data = json.loads(raw, parse_constant=_refuse_json_constant) if raw else None
    except RecursionError:
        raise ApiError(400, "too_deep", f"JSON nested deeper than {max_depth} levels") from None
    except ValueError:  # also bytes that are not UTF-8 (UnicodeDecodeError)
        data = None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "body must be a JSON object")
    problem = json_problem(data, max_depth)
    if problem is not None:
        raise problem
    return data


def required_text(data: dict[str, Any], field: str, max_chars: int, *, required: bool = True) -> str:
    value = data.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ApiError(400, "invalid_field", f"'{field}' must be a string")
    if required and not value.strip():
        raise ApiError(400, "invalid_field", f"'{field}' must not be empty")
    if len(value) > max_chars:
        raise ApiError(413, "field_too_long", f"'{field}' is over {max_chars} characters")
    if reason := unsafe_text_reason(value):  # also for callers that did not use json_body
        raise ApiError(400, "invalid_text", f"'{field}' contains {reason}")
    return value


class IsoJSONProvider(DefaultJSONProvider):
    """Dates as ISO 8601 (Flask's default is the HTTP-date format)."""

    @staticmethod
    def default(value: Any) -> Any:
        if isinstance(value, (datetime, date)):
            return value.isoformat()
        return DefaultJSONProvider.default(value)


@cache
def openapi_document(name: str) -> dict[str, Any]:
    """docs/openapi/<name>.json, read once."""
    return json.loads((OPENAPI_DIR / f"{name}.json").read_text(encoding="utf-8"))


def refuse_unsafe_url() -> None:
    """Before every routed request: a NUL character in the path or query is a 400, not a database
    error. An unknown route or method keeps its 404/405."""
    if request.routing_exception is not None:
        return
    for part in [request.path, *request.args.keys(), *request.args.values()]:
        if reason := unsafe_text_reason(part):
            raise ApiError(400, "invalid_url", f"the URL contains {reason}")


def route_label() -> str:
    """The request's route rule ("/status/<question_id>"), never the raw path: a bounded label."""
    return request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """The method as a metric label: any token is a valid method to Werkzeug, so anything outside the
    standard set is "other" (one series, not one per made-up method)."""
    return method if method in HTTP_METHODS else "other"


def expose_metrics(app: Flask, service: str, collectors: Sequence[Collector] = ()) -> None:
    """Count and time every request by route rule, and serve GET /metrics/prometheus: the process's
    metrics (common.metrics) plus `collectors`, values this app reads when it is scraped."""
    scraped = CollectorRegistry(auto_describe=False)  # the app's own: a second app never clashes
    for collector in collectors:
        scraped.register(collector)

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _count_request(response: Response) -> Response:
        started = g.get("metrics_started")
        if started is not None:
            seconds = time.perf_counter() - started
            observe_http_request(service, route_label(), method_label(request.method), response.status_code, seconds)
        return response

    def prometheus_text() -> Response:
        return Response(generate_latest(REGISTRY) + generate_latest(scraped), content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics/prometheus", "metrics_prometheus", prometheus_text, methods=["GET"])


def configure_json_api(
    app: Flask, *, openapi: str | None = None, service: str | None = None, metrics: Sequence[Collector] = ()
) -> None:
    """ISO dates in JSON, every error as JSON: {"error": ..., "message": ...}, Prometheus metrics
    (`expose_metrics`; `service` defaults to the app's name, storage_service -> storage-service) and,
    with `openapi` (a file name under docs/openapi/), the service's OpenAPI description at GET /openapi.json."""
    app.json = IsoJSONProvider(app)
    # "/status//x" is a 404 in JSON, not an HTML redirect to "/status/x". (Routes added after this.)
    app.url_map.merge_slashes = False
    expose_metrics(app, service or app.name.replace("_", "-"), metrics)  # first: a refused URL is timed too
    app.before_request(refuse_unsafe_url)

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return jsonify(error=exc.error, message=exc.message), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        return jsonify(error=exc.name.lower().replace(" ", "_"), message=exc.description), exc.code

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return jsonify(error="internal_error", message="internal error; see the service log"), 500

    if openapi is not None:
        document = openapi_document(openapi)  # at start: a missing file fails the service, not a request
        app.add_url_rule("/openapi.json", "openapi", lambda: jsonify(document), methods=["GET"])


def serve(
    app_factory: Callable[[], Flask],
    port: int,
    *,
    bind_host: str | None = None,
    threads: int = 8,
    timeout_s: int = 120,
) -> None:
    """Run under gunicorn: one worker (the app holds models/clients and counters), several threads.

    Listens on `bind_host`, by default BIND_HOST (127.0.0.1: nothing is exposed unless asked).
    """
    from gunicorn.app.base import BaseApplication

    host = bind_host or StackSettings().bind_host

    class _App(BaseApplication):
        def load_config(self) -> None:
            for key, value in {
                "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                "workers": 1,
                "threads": threads,
                "worker_class": "gthread",
                "timeout": timeout_s,
                "graceful_timeout": 30,
                "accesslog": None,
                "errorlog": "-",
                # One fixed socket path per user: two services on one host would fight over it.
                "control_socket_disable": True,
            }.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return app_factory()

    _App().run()
