"""Loads the model on the engine LOCAL_LLM_ENGINE asks for (auto: llama.cpp, else transformers)."""

from __future__ import annotations

import logging

from local_llm.config import LocalLLMSettings
from local_llm.engine import LLAMACPP, TRANSFORMERS, Engine, choose_engine, usable_cpus

log = logging.getLogger(__name__)


def load_llamacpp(settings: LocalLLMSettings) -> Engine:
    from local_llm.llama_engine import LlamaCppModel
    from local_llm.model import gguf_path

    return LlamaCppModel(
        gguf_path(),
        slots=settings.ollama_num_parallel,
        threads=settings.local_llm_threads or usable_cpus(),
        context_tokens=settings.local_llm_context_tokens,
    )


def load_transformers(settings: LocalLLMSettings) -> Engine:
    from local_llm.model import LocalModel

    return LocalModel(settings.cache_dir, settings.local_llm_threads or 1)


def load_model(settings: LocalLLMSettings) -> Engine:
    """Raises EngineUnavailable when LOCAL_LLM_ENGINE=llamacpp and llama.cpp cannot serve."""
    model, problem = None, None
    if settings.local_llm_engine != TRANSFORMERS:
        try:
            model = load_llamacpp(settings)
        except (ImportError, OSError, RuntimeError, ValueError) as exc:  # no wheel, a bad build, a bad file
            problem = f"{type(exc).__name__}: {exc}"
    choice = choose_engine(settings.local_llm_engine, problem)
    (log.warning if problem else log.info)("engine chosen", extra={"engine": choice.engine, "reason": choice.reason})
    if choice.engine == LLAMACPP and model is not None:
        return model
    return load_transformers(settings)
