from __future__ import annotations

from common.settings import PipelineSettings


class LLMConsumerSettings(PipelineSettings):
    ollama_url: str = "http://localhost:11434"
    llm_model: str = "tinyllama"
    llm_timeout_s: float = 120.0
    llm_num_predict: int = 256
    # Above zero so that a regenerated answer can differ from the rejected one.
    llm_temperature: float = 0.7
    llm_consumer_id: str = ""
