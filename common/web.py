"""What the HTTP services share: JSON errors (never a stack trace), body validation, gunicorn."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from flask import Flask, Request, jsonify
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def json_body(request: Request, max_bytes: int, *, require_json_type: bool = True) -> dict[str, Any]:
    """The request's JSON object, or an ApiError with the right status (413, 415, 400).

    `require_json_type=False` parses the body whatever its Content-Type, as Ollama's API does.
    """
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "payload_too_large", f"request body over {max_bytes} bytes")
    if require_json_type and not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
    raw = request.get_data(cache=True)
    if len(raw) > max_bytes:
        raise ApiError(413, "payload_too_large", f"request body over {max_bytes} bytes")
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "body must be a JSON object")
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
    return value


class IsoJSONProvider(DefaultJSONProvider):
    """Dates as ISO 8601 (Flask's default is the HTTP-date format)."""

    @staticmethod
    def default(value: Any) -> Any:
        if isinstance(value, (datetime, date)):
            return value.isoformat()
        return DefaultJSONProvider.default(value)


def configure_json_api(app: Flask) -> None:
    """ISO dates in JSON, and every error as JSON: {"error": ..., "message": ...}."""
    app.json = IsoJSONProvider(app)

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


def serve(app_factory: Callable[[], Flask], port: int, *, threads: int = 8, timeout_s: int = 120) -> None:
    """Run under gunicorn: one worker (the app holds models/clients and counters), several threads."""
    from gunicorn.app.base import BaseApplication

    class _App(BaseApplication):
        def load_config(self) -> None:
            for key, value in {
                "bind": f"0.0.0.0:{port}",
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
