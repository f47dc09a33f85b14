"""The llama.cpp engine: the same GGUF file run natively by llama-cpp-python (built once from source
by scripts/install.sh). One llama.cpp context per slot, so OLLAMA_NUM_PARALLEL requests generate
at once: the Python binding's Llama keeps one sequence per context, and the model file is
memory-mapped, so the contexts share its weights."""

from __future__ import annotations

import codecs
import importlib
import logging
import queue
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from local_llm.engine import (
    LLAMACPP,
    Generation,
    Options,
    StopScanner,
    fit_prompt,
    llamacpp_sampling,
    threads_per_slot,
)

log = logging.getLogger(__name__)


class LlamaCppModel:
    engine = LLAMACPP

    def __init__(self, gguf: Path, slots: int, threads: int, context_tokens: int) -> None:
        # An optional dependency, imported by name: the wheel is built on the machine (install.sh),
        # the local_llm image does not have it (there `auto` serves transformers). ImportError here
        # when it is not installed: the caller may fall back.
        llama_cpp = importlib.import_module("llama_cpp")
        self._llama_cpp = llama_cpp
        self.slots = max(1, slots)
        self.context_tokens = context_tokens
        self.threads = threads_per_slot(threads, self.slots)
        # Reading the prompt uses every thread: it is short, and the contexts seldom read at the same
        # time (measured: a 62-token prompt in 150 ms on 2 threads, 240 ms on 1).
        self.batch_threads = max(1, threads)
        started = time.monotonic()
        contexts = [self._context(llama_cpp, gguf) for _ in range(self.slots)]
        self.load_ns = int((time.monotonic() - started) * 1e9)
        self._free: queue.Queue = queue.Queue()
        for llm in contexts:
            self._free.put(llm)
        self._tokenizer = contexts[0]  # tokenizing reads the vocabulary only: safe beside a generation
        self._vocab = llama_cpp.llama_model_get_vocab(contexts[0].model)
        self._chat = self._chat_formatter(importlib.import_module("llama_cpp.llama_chat_format"), contexts[0])
        self.size_bytes = gguf.stat().st_size
        log.info(
            "model loaded",
            extra={
                "engine": LLAMACPP,
                "gguf": str(gguf),
                "slots": self.slots,
                "threads_per_slot": self.threads,
                "seconds": round(self.load_ns / 1e9, 2),
            },
        )

    def _context(self, llama_cpp, gguf: Path):
        return llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=self.context_tokens,
            n_threads=self.threads,
            n_threads_batch=self.batch_threads,
            verbose=False,
        )

    @staticmethod
    def _chat_formatter(chat_format, llm):
        """The chat template stored in the GGUF (the one transformers applies too)."""
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise RuntimeError("the GGUF file has no chat template")

        def token_text(token: int) -> str:
            return llm.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

        return chat_format.Jinja2ChatFormatter(
            template, eos_token=token_text(llm.token_eos()), bos_token=token_text(llm.token_bos())
        )

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        prompt = self._chat(messages=messages).prompt
        # The template writes the special tokens itself: tokenize them as such, add no BOS of our own.
        return self._tokenizer.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def raw_prompt_ids(self, prompt: str) -> list[int]:
        return self._tokenizer.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)

    @contextmanager
    def _slot(self):
        """A free context; waits for one when all are generating (the API's queue bounds the waiting)."""
        llm = self._free.get()
        try:
            yield llm
        finally:
            self._free.put(llm)

    def stream(self, inputs: list[int], options: Options) -> Iterator[str | Generation]:
        """Yields text pieces as they are generated, then one Generation with the totals."""
        prompt = fit_prompt(inputs, self.context_tokens, options.num_predict)
        limit = min(options.num_predict, self.context_tokens - len(prompt))  # the context is full then
        scanner = StopScanner(options.stop)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character may span two tokens
        count, done_reason = 0, "length"
        with self._slot() as llm:
            if options.seed is None:  # Ollama samples differently each time unless a seed is given
                llm.set_seed(random.getrandbits(31))
            else:
                # Repeatable: the whole prompt evaluated afresh, as the generate() of another request
                # reusing a cached prefix of it gives slightly different logits, so other samples.
                llm.set_seed(options.seed)
                llm.reset()
            started = time.monotonic_ns()
            first_token_at = None
            tokens = llm.generate(prompt, reset=True, **llamacpp_sampling(options))
            try:
                for token in tokens:
                    if first_token_at is None:
                        first_token_at = time.monotonic_ns()
                    if self._llama_cpp.llama_vocab_is_eog(self._vocab, token):
                        done_reason = "stop"
                        break
                    count += 1
                    out = scanner.feed(decoder.decode(llm.detokenize([token])))
                    if out:
                        yield out
                    if scanner.stopped:
                        done_reason = "stop"
                        break
                    if count >= limit:
                        break
            finally:
                tokens.close()
        if not scanner.stopped:
            tail = scanner.feed(decoder.decode(b"", final=True)) + scanner.flush()
            if tail:
                yield tail
            if scanner.stopped:
                done_reason = "stop"
        ended = time.monotonic_ns()
        first = first_token_at or ended
        yield Generation(
            scanner.text,
            done_reason,
            prompt_tokens=len(prompt),
            eval_tokens=count,
            prompt_eval_ns=first - started,
            eval_ns=ended - first,
        )
