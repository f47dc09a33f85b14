"""A small client for Ollama's POST /api/generate (stream false)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import requests

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


class LLMFailure(Exception):
    def __init__(self, message: str, *, status: int | None = None, timed_out: bool = False, unreachable: bool = False):
        super().__init__(message)
        self.status, self.timed_out, self.unreachable = status, timed_out, unreachable


class OllamaClient:
    def __init__(self, base_url: str, model: str, timeout_s: float, options: dict) -> None:
        self.url = base_url.rstrip("/") + "/api/generate"
        self.model, self.timeout_s, self.options = model, timeout_s, options
        self._session = requests.Session()

    def request_body(self, prompt: str) -> dict:
        return {"model": self.model, "prompt": prompt, "stream": False, "options": self.options}

    def generate(self, body: dict) -> Generation:
        started = time.monotonic()
        try:
            resp = self._session.post(self.url, json=body, timeout=(5, self.timeout_s))
        except requests.Timeout as exc:
            raise LLMFailure(f"timed out after {self.timeout_s}s", timed_out=True) from exc
        except requests.ConnectionError as exc:
            raise LLMFailure(f"connection failed: {exc}", unreachable=True) from exc
        latency_ms = (time.monotonic() - started) * 1000
        if resp.status_code != 200:
            raise LLMFailure(f"HTTP {resp.status_code}: {resp.text[:300]}", status=resp.status_code)
        try:
            data = resp.json()
            text = data["response"]
        except (ValueError, KeyError, TypeError) as exc:
            raise LLMFailure(f"malformed reply: {resp.text[:300]}", status=resp.status_code) from exc
        if not isinstance(text, str) or not text.strip():
            raise LLMFailure("empty answer", status=resp.status_code)
        return Generation(text.strip(), data.get("model", self.model), latency_ms)
