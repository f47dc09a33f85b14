"""The versioned message schema shared by every topic (DESIGN.md, "Message")."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

ErrorKind = Literal["overload", "quota", "error", "retries_exhausted"]


class MessageError(ValueError):
    """Raised when bytes on a topic are not a valid pipeline message."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def normalise_question(text: str) -> str:
    """Case-, width- and whitespace-insensitive form used to identify a question."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", folded).strip()


def question_id_for(text: str) -> str:
    """Stable id: the same question sent twice is one pipeline run."""
    return hashlib.sha256(normalise_question(text).encode("utf-8")).hexdigest()[:32]


class Score(BaseModel):
    precision: float
    recall: float
    f1: float
    model: str


class LLMError(BaseModel):
    status: int | None = None
    kind: ErrorKind
    message: str = ""


class ScoreRecord(BaseModel):
    """One scored attempt, carried along so the terminal message holds the whole history."""

    attempt: int
    f1: float
    precision: float
    recall: float
    llm_answer: str
    scored_at: datetime = Field(default_factory=utc_now)


class PipelineMessage(BaseModel):
    # Unknown fields survive a re-publish (forward compatibility with newer producers).
    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    question_id: str = Field(min_length=1, max_length=128)
    question_text: str = Field(min_length=1)
    original_answer: str = ""
    run: int = Field(default=1, ge=1)  # bumped when a failed/low-quality question is asked again
    attempt: int = Field(default=1, ge=1)
    retry_count: int = Field(default=0, ge=0)
    llm_answer: str | None = None
    model: str | None = None
    llm_latency_ms: float | None = None
    score: Score | None = None
    error: LLMError | None = None
    not_before: datetime | None = None
    score_history: list[ScoreRecord] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utc_now)
    updated_at: datetime = Field(default_factory=utc_now)

    @classmethod
    def new(cls, question_text: str, original_answer: str = "") -> PipelineMessage:
        return cls(
            question_id=question_id_for(question_text),
            question_text=question_text,
            original_answer=original_answer,
        )

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> PipelineMessage:
        if raw is None:
            raise MessageError("empty message value")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MessageError(f"not JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> PipelineMessage:
        if not isinstance(data, dict):
            raise MessageError("message is not a JSON object")
        version = data.get("schema_version")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise MessageError(f"unsupported schema_version: {version!r}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise MessageError(f"invalid message: {exc.errors(include_url=False)}") from exc

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @property
    def key(self) -> bytes:
        return self.question_id.encode("utf-8")

    def evolve(self, **changes: Any) -> PipelineMessage:
        """A copy with `changes` applied and `updated_at` refreshed; the original is untouched."""
        data = self.model_dump()
        data.update(changes)
        data["updated_at"] = utc_now()
        return type(self).model_validate(data)
