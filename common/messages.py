"""The versioned message schema shared by every topic (DESIGN.md, "Message")."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import unicodedata
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

ErrorKind = Literal["overload", "quota", "error", "retries_exhausted"]


class MessageError(ValueError):
    """Raised when bytes on a topic are not a valid pipeline message."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def normalise_question(text: str) -> str:
    """Case-, width- and whitespace-insensitive form used to identify a question."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", folded).strip()


def question_id_for(text: str) -> str:
    """Stable id: the same question sent twice is one pipeline run."""
    return hashlib.sha256(normalise_question(text).encode("utf-8")).hexdigest()[:32]


# No field of the schema nests more than a few levels; unknown fields get generous room.
MAX_NESTING_DEPTH = 64


def nesting_depth(data: Any) -> int:
    """How deeply lists and objects nest in decoded JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


class Score(BaseModel):
    precision: float
    recall: float
    f1: float
    model: str


class LLMError(BaseModel):
    status: int | None = None
    kind: ErrorKind
    message: str = ""
    # The server's Retry-After on a 429/503, in seconds: the retry waits at least this long.
    retry_after_s: float | None = Field(default=None, ge=0)


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
    # Error retries within this attempt, in total (part of the LLM-call dedupe key) and per budget:
    # the overload and quota retry consumers each spend only their own.
    retry_count: int = Field(default=0, ge=0)
    overload_retries: int = Field(default=0, ge=0)
    quota_retries: int = Field(default=0, ge=0)
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
        """The message in `raw`; every way bytes can be wrong (not UTF-8, not JSON, nested a few
        thousand levels deep, not an object, not the schema) is a MessageError, nothing else."""
        if raw is None:
            raise MessageError("empty message value (null record)")
        try:
            data = json.loads(raw)
        except RecursionError as exc:  # a few KB of `[[[[` exhausts the decoder's stack
            raise MessageError("not JSON: nested too deeply to decode") from exc
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
            raise MessageError(f"not JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> PipelineMessage:
        if not isinstance(data, dict):
            raise MessageError(f"message is not a JSON object but {type(data).__name__}")
        version = data.get("schema_version")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise MessageError(f"unsupported schema_version: {str(version)[:50]!r}")
        # Unknown fields are kept, so a deep one would parse here and fail later when the message is
        # re-published (pydantic refuses to serialise past a few hundred levels).
        if nesting_depth(data) > MAX_NESTING_DEPTH:
            raise MessageError(f"message nested deeper than {MAX_NESTING_DEPTH} levels")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise MessageError(f"invalid message: {exc.errors(include_url=False)}"[:1_000]) from exc
        except (RecursionError, ValueError, TypeError) as exc:
            raise MessageError(f"invalid message: {exc}"[:1_000]) from exc

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


# A dead letter keeps at most this much of the message it wraps (plus its size and sha256), so the
# envelope always fits the broker's limit whatever arrived.
MAX_DEAD_LETTER_RAW_BYTES = 64 * 1024


def utf8_or_none(data: bytes, *, truncated: bool = False) -> str | None:
    """The text, if `data` is UTF-8; a cut may have split the last character, which is then dropped."""
    for trim in range(4 if truncated else 1):
        try:
            return data[: len(data) - trim].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


class DeadLetter(BaseModel):
    """The envelope on `dead-letter`: what could not be processed, where, and why.

    The raw bytes are kept once: as text when they are valid UTF-8, else as base64; cut to
    MAX_DEAD_LETTER_RAW_BYTES, with the full size and sha256 to tell what was cut.
    """

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    stage: str  # who gave up: llm-consumer, retry-overload-consumer, storage-consumer, flink_job, ...
    reason: str = Field(max_length=2_000)
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    question_id: str | None = None  # when known: the message's key or its parsed question_id
    run: int | None = None
    raw_size: int
    raw_sha256: str
    raw_truncated: bool
    raw_text: str | None = None
    raw_base64: str | None = None
    failed_at: datetime = Field(default_factory=utc_now)

    @classmethod
    def wrap(
        cls,
        raw: bytes | None,
        *,
        stage: str,
        reason: str,
        source_topic: str,
        partition: int | None = None,
        offset: int | None = None,
        key: bytes | None = None,
        message: PipelineMessage | None = None,
    ) -> DeadLetter:
        raw = raw or b""
        kept = raw[:MAX_DEAD_LETTER_RAW_BYTES]
        text = utf8_or_none(kept, truncated=len(kept) < len(raw))
        key_text = key.decode("utf-8", "replace")[:256] if key else None
        return cls(
            stage=stage,
            reason=reason[:2_000],
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            key=key_text,
            question_id=message.question_id if message else key_text,
            run=message.run if message else None,
            raw_size=len(raw),
            raw_sha256=hashlib.sha256(raw).hexdigest(),
            raw_truncated=len(kept) < len(raw),
            raw_text=text,
            raw_base64=None if text is not None else base64.b64encode(kept).decode("ascii"),
        )

    def raw(self) -> bytes:
        """The bytes kept (all of them unless raw_truncated)."""
        if self.raw_text is not None:
            return self.raw_text.encode("utf-8")
        return base64.b64decode(self.raw_base64 or "")

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> DeadLetter:
        try:
            return cls.model_validate_json(raw or b"")
        except ValidationError as exc:
            raise MessageError(f"invalid dead letter: {exc.errors(include_url=False)}"[:1_000]) from exc
        except (RecursionError, ValueError) as exc:
            raise MessageError(f"invalid dead letter: {exc}"[:1_000]) from exc

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")
