from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from common.settings import ServiceSettings


class LocalLLMSettings(ServiceSettings):
    local_llm_port: int | None = None  # default: the port of OLLAMA_URL
    local_llm_model_name: str = "smollm2:135m"
    # One torch thread: with two, generation collapsed ~10x whenever the other core was busy.
    local_llm_threads: int = 1
    local_llm_default_num_predict: int = 128
    local_llm_max_num_predict: int = 1024
    ollama_max_queue: int = 8  # requests waiting beyond the one generating; more get HTTP 503

    @property
    def port(self) -> int:
        return self.local_llm_port or urlparse(self.ollama_url).port or 11434

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "local-llm" / "smollm2-135m-instruct"
