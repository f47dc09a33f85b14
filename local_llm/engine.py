"""Which engine serves the model, and the decisions every engine shares. Pure (unit-tested):
nothing here loads a model or imports torch or llama_cpp."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

LLAMACPP = "llamacpp"
TRANSFORMERS = "transformers"


@dataclass
class Options:
    """Ollama's generation options that this server honours (Ollama's defaults). The transformers
    engine ignores top_k, min_p and repeat_penalty."""

    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.0
    repeat_penalty: float = 1.1
    seed: int | None = None
    num_predict: int = 128
    stop: list[str] = field(default_factory=list)

    @classmethod
    def from_request(cls, raw: dict | None, default_num_predict: int, max_num_predict: int) -> Options:
        """Raises TypeError or ValueError for an option of the wrong type (the API answers 400)."""
        raw = raw or {}
        num_predict = int(raw.get("num_predict", default_num_predict))
        if num_predict < 0:  # Ollama: -1 means "until done"
            num_predict = max_num_predict
        stop = raw.get("stop") or []
        return cls(
            temperature=float(raw.get("temperature", cls.temperature)),
            top_p=float(raw.get("top_p", cls.top_p)),
            top_k=int(raw.get("top_k", cls.top_k)),
            min_p=float(raw.get("min_p", cls.min_p)),
            repeat_penalty=float(raw.get("repeat_penalty", cls.repeat_penalty)),
            seed=int(raw["seed"]) if raw.get("seed") is not None else None,
            num_predict=max(1, min(num_predict, max_num_predict)),
            stop=[stop] if isinstance(stop, str) else [str(s) for s in stop],
        )


@dataclass
class Generation:
    """The totals of one generation (Ollama's final chunk); the *_ns are wall-clock nanoseconds:
    prompt_eval_ns up to the first answer token (time to first token), eval_ns the rest."""

    text: str
    done_reason: str
    prompt_tokens: int
    eval_tokens: int
    prompt_eval_ns: int
    eval_ns: int


class EngineUnavailable(RuntimeError):
    """The engine asked for by name cannot serve here (and no fallback was asked for)."""


@dataclass(frozen=True)
class EngineChoice:
    engine: str
    reason: str  # one line for the log: why this engine


def choose_engine(requested: str, llamacpp_problem: str | None) -> EngineChoice:
    """`requested` is LOCAL_LLM_ENGINE; `llamacpp_problem` is why llama.cpp failed to import or load
    (None when it loaded, or was not tried). Only `auto` falls back; a named engine that fails is an error."""
    if requested == TRANSFORMERS:
        return EngineChoice(TRANSFORMERS, "LOCAL_LLM_ENGINE=transformers")
    if llamacpp_problem is None:
        return EngineChoice(LLAMACPP, f"LOCAL_LLM_ENGINE={requested}: llama-cpp-python loaded the model")
    if requested == LLAMACPP:
        raise EngineUnavailable(f"LOCAL_LLM_ENGINE=llamacpp but llama.cpp cannot serve: {llamacpp_problem}")
    return EngineChoice(
        TRANSFORMERS,
        f"llama.cpp unavailable ({llamacpp_problem}); serving with transformers, several times slower "
        "(scripts/install.sh builds llama-cpp-python; README, 'The LLM')",
    )


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_slot(total_threads: int, slots: int) -> int:
    """Each llama.cpp context gets an equal share of the threads. Measured on 2 cores: two contexts of
    1 thread gave 1.7x one context's tokens/s; two of 2 threads (4 spinning on 2 cores) gave 0.95x."""
    return max(1, total_threads // max(1, slots))


def admits(pending: int, parallel: int, max_waiting: int) -> bool:
    """Ollama's rule: `parallel` requests generate, `max_waiting` (OLLAMA_MAX_QUEUE) wait, the rest get 503."""
    return pending < parallel + max_waiting


def fit_prompt(tokens: list[int], context_tokens: int, num_predict: int) -> list[int]:
    """The prompt's tokens that fit the context beside the answer: as Ollama, the start is dropped."""
    room = max(1, context_tokens - num_predict)
    return tokens[-room:]


def llamacpp_sampling(options: Options) -> dict:
    """Ollama's options as llama-cpp-python's Llama.generate keywords. temperature 0 is greedy."""
    return {
        "temp": max(0.0, options.temperature),
        "top_p": options.top_p,
        "top_k": options.top_k,
        "min_p": options.min_p,
        "repeat_penalty": options.repeat_penalty,
    }


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop sequence (not sent yet)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class StopScanner:
    """Cuts the answer at the first stop sequence and never streams a piece of one: a tail that may
    begin a stop sequence is held back until the next piece shows whether it does."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Adds a generated piece; returns the text now safe to send."""
        self.text += piece
        cut = first_stop(self.text, self.stops)
        if cut is not None:
            self.text, self.stopped = self.text[:cut], True
            return self.flush()
        safe = len(self.text) - held_back(self.text, self.stops)
        out = self.text[self.sent : safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return out

    def flush(self) -> str:
        """The generation ended: whatever was held back is part of the answer."""
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out


def first_stop(text: str, stops: list[str]) -> int | None:
    positions = [text.find(s) for s in stops if s and s in text]
    return min(positions) if positions else None


class Engine(Protocol):
    """What the Ollama API (app.py) needs of a model, whichever engine runs it."""

    engine: str
    slots: int  # generations served at once
    size_bytes: int

    def chat_prompt_ids(self, messages: list[dict]): ...

    def raw_prompt_ids(self, prompt: str): ...

    def stream(self, inputs, options: Options): ...  # yields str pieces, then one Generation


__all__ = ["Engine", "EngineChoice", "Generation", "Options", "StopScanner", "choose_engine"]
