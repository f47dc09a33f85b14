"""python -m local_llm.check: can llama.cpp serve here? Loads the GGUF with llama-cpp-python and
generates a few tokens. scripts/install.sh runs it in a process of its own after installing the
wheel (a wheel built for other CPUs dies of SIGILL, one needing a newer glibc fails to import) and
uninstalls the wheel when it fails, so that LOCAL_LLM_ENGINE=auto falls back to transformers."""

from __future__ import annotations

import sys
import time

from local_llm.config import LocalLLMSettings
from local_llm.engine import Generation, Options
from local_llm.load import load_llamacpp


def main() -> int:
    settings = LocalLLMSettings(ollama_num_parallel=1, local_llm_context_tokens=256)
    started = time.monotonic()
    try:
        model = load_llamacpp(settings)
        *_, final = model.stream(model.raw_prompt_ids("The capital of France is"), Options(num_predict=4, seed=1))
    except (ImportError, OSError, RuntimeError, ValueError) as exc:
        print(f"llama.cpp cannot serve here: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    assert isinstance(final, Generation)
    if final.eval_tokens < 1:
        print("llama.cpp loaded the model but generated nothing", file=sys.stderr)
        return 1
    print(f"llama.cpp serves here: {final.eval_tokens} tokens in {time.monotonic() - started:.1f} s (load included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
