"""LLM clients: Ollama's POST /api/generate (the default) and an OpenAI-compatible
POST /chat/completions. Both raise LLMFailure with what the pipeline needs to classify a failure."""

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
    # As the server reports them (Ollama: prompt_eval_count/eval_count; OpenAI: usage); None if not.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def token_count(value: object) -> int | None:
    """A token count a server reported, or None for anything that is not a non-negative whole number."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class LLMFailure(Exception):
    def __init__(self, message: str, *, status: int | None = None, timed_out: bool = False, unreachable: bool = False):
        super().__init__(message)
        self.status, self.timed_out, self.unreachable = status, timed_out, unreachable


class _JsonHttpClient:
    """POSTs JSON and turns every way it can go wrong into an LLMFailure."""

    def __init__(self, url: str, model: str, timeout_s: float, headers: dict | None = None) -> None:
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self._session = requests.Session()
        self._session.headers.update(headers or {})

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
            raise LLMFailure(f"HTTP {resp.status_code}: {resp.text[:300]}", status=resp.status_code)
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
    def __init__(self, base_url: str, model: str, timeout_s: float, options: dict) -> None:
        super().__init__(base_url.rstrip("/") + "/api/generate", model, timeout_s)
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
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        super().__init__(base_url.rstrip("/") + "/chat/completions", model, timeout_s, headers)
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
