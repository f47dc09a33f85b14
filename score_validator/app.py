"""HTTP API: GET /health, POST /score (one pair), POST /score/batch (many pairs).

Both queue their pairs for the scorer's micro-batching (score_validator.scorer): concurrent requests
share model calls, and a pair's score never depends on what it was batched with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from common import metrics
from common.messages import Score
from common.web import ApiError, configure_json_api, json_body, required_text
from score_validator.config import ScoreValidatorSettings
from score_validator.scorer import Pair, Scorer


@contextmanager
def counted_score_request() -> Iterator[None]:
    """yahoo_score_requests_total by outcome: ok, rejected (the request's fault, 4xx) or error."""
    try:
        yield
    except (ApiError, HTTPException):
        metrics.SCORE_REQUESTS.labels("rejected").inc()
        raise
    except Exception:
        metrics.SCORE_REQUESTS.labels("error").inc()
        raise
    metrics.SCORE_REQUESTS.labels("ok").inc()


def timed_scores(scorer: Scorer, pairs: list[Pair]) -> list[Score]:
    with metrics.SCORE_SECONDS.time():
        return scorer.score(pairs)


def create_app(settings: ScoreValidatorSettings, scorer: Scorer) -> Flask:
    metrics.start_at_zero(metrics.SCORE_REQUESTS, [("ok",), ("rejected",), ("error",)])
    app = Flask("score_validator")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    configure_json_api(app, openapi="score_validator")

    def parse_pair(item) -> Pair:
        if not isinstance(item, dict):
            raise ApiError(400, "invalid_field", "each pair must be an object with 'candidate' and 'reference'")
        return Pair(
            required_text(item, "candidate", settings.max_text_chars, required=False),
            required_text(item, "reference", settings.max_text_chars, required=False),
        )

    @app.get("/health")
    def health():
        return jsonify(status="healthy", service="score-validator", model=scorer.label)

    @app.post("/score")
    def score_one():
        with counted_score_request():
            pair = parse_pair(json_body(request, settings.max_body_bytes))
            [result] = timed_scores(scorer, [pair])
        return jsonify(result.model_dump())

    @app.post("/score/batch")
    def score_batch():
        with counted_score_request():
            items = json_body(request, settings.max_body_bytes).get("pairs")
            if not isinstance(items, list):
                raise ApiError(400, "invalid_field", "'pairs' must be a list")
            if len(items) > settings.max_batch_pairs:
                raise ApiError(413, "too_many_pairs", f"at most {settings.max_batch_pairs} pairs per request")
            results = timed_scores(scorer, [parse_pair(item) for item in items])
        return jsonify(scores=[r.model_dump() for r in results])

    return app
