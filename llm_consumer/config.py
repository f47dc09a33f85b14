from __future__ import annotations

from typing import Literal

from pydantic import Field

from common.settings import PipelineSettings


class LLMConsumerSettings(PipelineSettings):
    llm_backend: Literal["ollama", "openai"] = "ollama"
    # LLM_BACKEND=openai: any OpenAI-compatible server; the default is Ollama's own /v1 API.
    openai_base_url: str = "http://localhost:11434/v1"
    openai_api_key: str | None = None
    llm_model: str = "tinyllama"
    llm_timeout_s: float = 120.0
    llm_num_predict: int = 256
    # Above zero so that a regenerated answer can differ from the rejected one.
    llm_temperature: float = 0.7
    llm_consumer_id: str = ""
    # Most LLM calls one consumer keeps in flight; the adaptive limit (common.inflight.AimdLimiter)
    # moves between 1 and this. 1: one call at a time, on the sequential runner of every consumer.
    llm_max_concurrency: int = Field(default=32, ge=1, le=256)
