"""LLM clients: Ollama's POST /api/generate (the default) and an OpenAI-compatible
POST /chat/completions. Both raise LLMFailure with what the pipeline needs to classify a failure."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests
from requests.adapters import HTTPAdapter

PROMPT_TEMPLATE = (
    "Answer the following question in a few sentences, accurately and in the language it is asked in.\n\n"
    "Question: {question}\nAnswer:"
)


def build_prompt(question_text: str) -> str:
    """Only the question goes to the LLM; the reference answer is never shown to it."""
    return PROMPT_TEMPLATE.format(question=question_text.strip())


@dataclass(frozen=True)
class Generation:
    text: str
    model: str
    latency_ms: float
    # As the server reports them (Ollama: prompt_eval_count/eval_count; OpenAI: usage); None if not.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def token_count(value: object) -> int | None:
    """A token count a server reported, or None for anything that is not a non-negative whole number."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """A `Retry-After` header in seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


class LLMFailure(Exception):
    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        timed_out: bool = False,
        unreachable: bool = False,
        retry_after_s: float | None = None,
    ):
        super().__init__(message)
        self.status, self.timed_out, self.unreachable = status, timed_out, unreachable
        self.retry_after_s = retry_after_s  # the server's Retry-After (429, 503), when it sent one


class _JsonHttpClient:
    """POSTs JSON and turns every way it can go wrong into an LLMFailure."""

    def __init__(
        self, url: str, model: str, timeout_s: float, headers: dict | None = None, connections: int = 1
    ) -> None:
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self._session = requests.Session()
        self._session.headers.update(headers or {})
        # One kept-alive connection per call in flight (the default pool keeps 10 and drops the rest).
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(1, connections))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def _post(self, body: dict) -> tuple[dict, float]:
        started = time.monotonic()
        try:
            resp = self._session.post(self.url, json=body, timeout=(5, self.timeout_s))
        except requests.Timeout as exc:
            raise LLMFailure(f"timed out after {self.timeout_s}s", timed_out=True) from exc
        except requests.ConnectionError as exc:
            raise LLMFailure(f"connection failed: {exc}", unreachable=True) from exc
        latency_ms = (time.monotonic() - started) * 1000
        if resp.status_code != 200:
            raise LLMFailure(
                f"HTTP {resp.status_code}: {resp.text[:300]}",
                status=resp.status_code,
                retry_after_s=retry_after_s(resp.headers.get("Retry-After")),
            )
        try:
            return resp.json(), latency_ms
        except ValueError as exc:
            raise LLMFailure(f"malformed reply: {resp.text[:300]}", status=resp.status_code) from exc

    @staticmethod
    def _answer(text, status: int = 200) -> str:
        if not isinstance(text, str) or not text.strip():
            raise LLMFailure("empty answer", status=status)
        return text.strip()


class OllamaClient(_JsonHttpClient):
    def __init__(self, base_url: str, model: str, timeout_s: float, options: dict, connections: int = 1) -> None:
        super().__init__(base_url.rstrip("/") + "/api/generate", model, timeout_s, connections=connections)
        self.options = options

    def request_body(self, prompt: str) -> dict:
        return {"model": self.model, "prompt": prompt, "stream": False, "options": self.options}

    def generate(self, body: dict) -> Generation:
        data, latency_ms = self._post(body)
        text = data.get("response") if isinstance(data, dict) else None
        return Generation(
            self._answer(text),
            data.get("model", self.model),
            latency_ms,
            prompt_tokens=token_count(data.get("prompt_eval_count")),
            completion_tokens=token_count(data.get("eval_count")),
        )


class OpenAIClient(_JsonHttpClient):
    """Any server with OpenAI's chat completions API (Ollama serves one at /v1, so do vLLM and others)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        timeout_s: float,
        temperature: float,
        max_tokens: int,
        api_key: str | None = None,
        connections: int = 1,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        super().__init__(base_url.rstrip("/") + "/chat/completions", model, timeout_s, headers, connections)
        self.temperature, self.max_tokens = temperature, max_tokens

    def request_body(self, prompt: str) -> dict:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def generate(self, body: dict) -> Generation:
        data, latency_ms = self._post(body)
        try:
            text = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise LLMFailure(f"malformed reply: {str(data)[:300]}", status=200) from exc
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return Generation(
            self._answer(text),
            data.get("model", self.model),
            latency_ms,
            prompt_tokens=token_count(usage.get("prompt_tokens")),
            completion_tokens=token_count(usage.get("completion_tokens")),
        )
