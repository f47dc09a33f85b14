"""The embedded LLM's engines on the same model file, measured in one run (issue 12): decode
tokens/s and time to first token with one request in flight, and the tokens/s of all requests
together with two in flight (the pipeline's two consumers). Used by `python -m benchmarks`."""

from __future__ import annotations

import threading
import time
from typing import Any

from local_llm.config import LocalLLMSettings
from local_llm.engine import LLAMACPP, TRANSFORMERS, Engine, Generation, Options

PROMPT = [{"role": "user", "content": "Explain why the sky is blue."}]
NUM_PREDICT = 128
ROUNDS = 5


def generate(model: Engine, inputs: Any) -> Generation:
    # A fixed seed: the same answer (and length) every round. Sampling, as the pipeline does.
    *_, final = model.stream(inputs, Options(temperature=0.7, seed=11, num_predict=NUM_PREDICT))
    assert isinstance(final, Generation)
    return final


def together(model: Engine, inputs: Any, requests: int) -> tuple[list[Generation], float]:
    """`requests` generations started at once: their results and the wall time until the last ended."""
    results: list[Generation] = []

    def one() -> None:
        results.append(generate(model, inputs))

    workers = [threading.Thread(target=one) for _ in range(requests)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results, time.perf_counter() - started


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def in_flight(model: Engine, inputs: Any) -> dict[str, float]:
    """One and two requests in flight, in alternating rounds (on a shared machine the load moves:
    each pair of rounds sees about the same), and the median ratio of their throughputs."""
    singles: list[Generation] = []
    one_rates, two_rates = [], []
    for _ in range(ROUNDS):
        [single], wall = together(model, inputs, 1)
        singles.append(single)
        one_rates.append(single.eval_tokens / wall)
        pair, wall = together(model, inputs, 2)
        two_rates.append(sum(g.eval_tokens for g in pair) / wall)
    tokens = sum(g.eval_tokens for g in singles)
    return {
        "tokens_per_s": round(tokens / (sum(g.eval_ns for g in singles) / 1e9), 1),
        "first_token_ms": round(median([g.prompt_eval_ns / 1e6 for g in singles]), 1),
        "one_in_flight_tokens_per_s": round(median(one_rates), 1),
        "two_in_flight_tokens_per_s": round(median(two_rates), 1),
        "scaling_two_vs_one": round(median([two / one for one, two in zip(one_rates, two_rates, strict=True)]), 2),
    }


def bench_engine(name: str, settings: LocalLLMSettings) -> dict[str, Any]:
    from local_llm.load import load_llamacpp, load_transformers

    started = time.perf_counter()
    model = (load_llamacpp if name == LLAMACPP else load_transformers)(settings)
    load_s = time.perf_counter() - started
    inputs = model.chat_prompt_ids(PROMPT)
    generate(model, inputs)  # warm-up
    return {"load_s": round(load_s, 2), "slots": model.slots, **in_flight(model, inputs)}


def bench_llm(engines: tuple[str, ...] = (LLAMACPP, TRANSFORMERS)) -> dict[str, Any]:
    """Flat results (the Markdown report lists them): per engine, and llama.cpp's speed-up."""
    settings = LocalLLMSettings()
    flat: dict[str, Any] = {"model": settings.local_llm_model_name, "num_predict": NUM_PREDICT}
    per_engine: dict[str, dict[str, Any]] = {}
    for name in engines:
        try:
            per_engine[name] = bench_engine(name, settings)
        except (ImportError, OSError, RuntimeError) as exc:  # llama.cpp not built here: say so, go on
            flat[f"{name}_unavailable"] = f"{type(exc).__name__}: {exc}"
            continue
        flat.update({f"{name}_{key}": value for key, value in per_engine[name].items()})
    if LLAMACPP in per_engine and TRANSFORMERS in per_engine:
        flat["llamacpp_speedup_tokens_per_s"] = round(
            per_engine[LLAMACPP]["tokens_per_s"] / per_engine[TRANSFORMERS]["tokens_per_s"],
            1,
        )
    return flat
