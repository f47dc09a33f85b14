"""The two HTTP apps built in-process (create_app) on fakes: no Kafka, PostgreSQL, Redis or model.

Only what the HTTP layer decides is under test here (status codes, JSON errors); the real
dependencies are exercised by tests/e2e.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask

from common.messages import PipelineMessage, Score
from common.topics import Status
from tests.fakes import FakeProducer

# A closed port: the storage app's Kafka admin client is only used by /health, which the fakes skip.
UNREACHABLE_KAFKA = "127.0.0.1:9"


class FakeRepository:
    """Every question is new the first time, pending afterwards; nothing is validated."""

    def __init__(self) -> None:
        self.claimed: dict[str, PipelineMessage] = {}
        self.accesses: dict[str, int] = {}  # record_accesses: question id -> accesses written

    @contextmanager
    def claim(self, message: PipelineMessage, *_args: Any, **_kwargs: Any) -> Iterator[Any]:
        from storage_service.repository import Claim

        is_new = message.question_id not in self.claimed
        self.claimed.setdefault(message.question_id, message)
        yield Claim(message.question_id, Status.PENDING.value, 1, is_new_run=is_new)

    def question(self, question_id: str) -> dict[str, Any] | None:
        return None

    def record_accesses(self, batch: dict[str, Any]) -> None:
        for question_id, access in batch.items():
            self.accesses[question_id] = self.accesses.get(question_id, 0) + access.count

    def metrics(self) -> dict[str, Any]:
        return {"total_responses": 0, "questions_by_status": {}}

    def ping(self) -> None:
        return None


class FakeCache:
    def get(self, question_id: str) -> dict[str, Any] | None:
        return None

    def put(self, question_id: str, result: dict[str, Any]) -> None:
        return None

    def delete(self, question_id: str) -> None:
        return None

    def ping(self) -> bool:
        return True


class FakeScorer:
    label = "fake/L6"

    def __init__(self) -> None:
        self.pairs: list[Any] = []

    def score(self, pairs: list[Any]) -> list[Score]:
        self.pairs.extend(pairs)
        return [Score(precision=0.5, recall=0.5, f1=0.5, model=self.label) for _ in pairs]


def storage_app() -> tuple[Flask, FakeRepository, FakeProducer]:
    from storage_service.app import create_app
    from storage_service.config import StorageSettings

    repo, producer = FakeRepository(), FakeProducer()
    settings = StorageSettings(kafka_bootstrap_servers=UNREACHABLE_KAFKA)
    app = create_app(settings, repo, FakeCache(), producer)  # type: ignore[arg-type]
    app.testing = True
    return app, repo, producer


def scorer_app() -> tuple[Flask, FakeScorer]:
    from score_validator.app import create_app
    from score_validator.config import ScoreValidatorSettings

    scorer = FakeScorer()
    app = create_app(ScoreValidatorSettings(), scorer)  # type: ignore[arg-type]
    app.testing = True
    return app, scorer
