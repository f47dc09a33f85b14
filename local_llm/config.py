from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from common.settings import ServiceSettings

EngineName = Literal["auto", "llamacpp", "transformers"]


class LocalLLMSettings(ServiceSettings):
    local_llm_port: int | None = None  # default: the port of OLLAMA_URL
    local_llm_model_name: str = "smollm2:135m"
    # auto: llama.cpp when llama-cpp-python imports and loads the model, else transformers (one log line why).
    local_llm_engine: EngineName = "auto"
    # CPU threads in total. Default: llama.cpp shares the usable CPUs between its slots; transformers
    # uses one torch thread (with two, generation collapsed ~10x whenever the other core was busy).
    local_llm_threads: int | None = None
    # Requests generated at once (llama.cpp: one context each; transformers always serves one).
    ollama_num_parallel: int = 2
    local_llm_context_tokens: int = 2048  # per slot: prompt + answer; longer prompts keep their end
    local_llm_default_num_predict: int = 128
    local_llm_max_num_predict: int = 1024
    ollama_max_queue: int = 8  # requests waiting beyond those generating; more get HTTP 503

    @property
    def port(self) -> int:
        return self.local_llm_port or urlparse(self.ollama_url).port or 11434

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "local-llm" / "smollm2-135m-instruct"
