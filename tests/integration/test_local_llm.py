"""The embedded Ollama-compatible server, driven by the official `ollama` Python client, on the real
SmolLM2-135M model, once per engine (llama.cpp, and transformers, the fallback). Started here on its
own port with OLLAMA_NUM_PARALLEL=2 and a queue of zero waiting requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime

import ollama
import pytest
import requests

from tests.conftest import ROOT, wait_until

PORT = 11437
SLOTS = {"llamacpp": 2, "transformers": 1}  # transformers generates one answer at a time


@pytest.fixture(scope="module", params=["llamacpp", "transformers"])
def engine(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def local_llm(engine):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OLLAMA_URL": f"http://127.0.0.1:{PORT}",
        "OLLAMA_MAX_QUEUE": "0",
        "OLLAMA_NUM_PARALLEL": "2",
        "LOCAL_LLM_ENGINE": engine,
        "YAHOO_LLM_STATE_DIR": os.environ.get("YAHOO_LLM_STATE_DIR", str(ROOT / ".state")),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "local_llm"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )

    def up():
        try:
            return requests.get(f"http://127.0.0.1:{PORT}/api/version", timeout=1).ok
        except requests.RequestException:
            assert proc.poll() is None, "local_llm exited"
            return False

    try:
        wait_until(up, 180, interval_s=0.5, what="local_llm to load its model")
        yield ollama.Client(host=f"http://127.0.0.1:{PORT}")
    finally:
        proc.terminate()
        proc.wait(30)


def test_generate_answers_with_ollama_fields(local_llm):
    reply = local_llm.generate(
        model="smollm2:135m", prompt="What is the capital of France?", options={"temperature": 0, "num_predict": 24}
    )
    assert reply.done and reply.done_reason in {"stop", "length"}
    assert "Paris" in reply.response
    assert reply.eval_count > 0 and reply.total_duration > 0 and reply.prompt_eval_count > 0


def test_chat_streams_ndjson_chunks(local_llm):
    chunks = list(
        local_llm.chat(
            model="smollm2:135m",
            messages=[{"role": "user", "content": "Say hello."}],
            stream=True,
            options={"num_predict": 12, "seed": 7},
        )
    )
    assert len(chunks) >= 2
    assert all(not c.done for c in chunks[:-1]) and chunks[-1].done
    assert "".join(c.message.content for c in chunks).strip()


def test_seed_makes_sampling_repeatable(local_llm):
    options = {"temperature": 0.9, "seed": 42, "num_predict": 16}
    first = local_llm.generate(model="smollm2:135m", prompt="Tell me about cats.", options=options).response
    second = local_llm.generate(model="smollm2:135m", prompt="Tell me about cats.", options=options).response
    assert first == second


def test_stop_sequence_ends_the_answer(local_llm):
    reply = local_llm.generate(
        model="smollm2:135m",
        prompt="List the numbers from 1 to 10, separated by commas.",
        options={"temperature": 0, "num_predict": 60, "stop": ["5"]},
    )
    assert "5" not in reply.response and "6" not in reply.response
    assert reply.done_reason == "stop"


def test_tags_and_version_name_the_model_and_engine(local_llm, engine):
    [model] = local_llm.list().models
    assert model.model == "smollm2:135m" and model.details.parameter_size == "135M"
    version = requests.get(f"http://127.0.0.1:{PORT}/api/version", timeout=5).json()
    assert version["version"] and version["engine"] == engine


def streaming(prompt: str, num_predict: int, raw: bool = False):
    return requests.post(
        f"http://127.0.0.1:{PORT}/api/generate",
        stream=True,
        timeout=120,
        json={"prompt": prompt, "raw": raw, "options": {"num_predict": num_predict, "seed": 1}},
    )


def test_full_queue_answers_503_like_ollama(local_llm, engine):
    # Streaming generations whose first chunk has arrived hold every slot (OLLAMA_MAX_QUEUE=0).
    holders = [streaming("Write a long story about the sea.", 60) for _ in range(SLOTS[engine])]
    try:
        lines = [h.iter_lines() for h in holders]
        for chunks in lines:
            assert b'"done": false' in next(chunks)
        with pytest.raises(ollama.ResponseError) as refused:
            local_llm.generate(model="smollm2:135m", prompt="Hi", options={"num_predict": 4})
        assert refused.value.status_code == 503
        assert "maximum pending requests exceeded" in refused.value.error
        for chunks in lines:  # let the generations finish
            for _ in chunks:
                pass
    finally:
        for h in holders:
            h.close()
    assert local_llm.generate(model="smollm2:135m", prompt="Hi", options={"num_predict": 4}).done


def chunk_times(prompt: str, num_predict: int, into: dict, key: str) -> None:
    """The server's created_at of a streamed answer's first and last chunk."""
    with streaming(prompt, num_predict, raw=True) as resp:
        stamps = [json.loads(line)["created_at"] for line in resp.iter_lines() if line]
    into[key] = (datetime.fromisoformat(stamps[0]), datetime.fromisoformat(stamps[-1]), len(stamps))


def test_two_requests_generate_at_the_same_time(local_llm, engine):
    if SLOTS[engine] < 2:
        pytest.skip("the transformers engine serves one generation at a time")
    # A counting prompt, raw: the model goes on counting rather than ending early.
    prompt = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
    times: dict = {}
    workers = [threading.Thread(target=chunk_times, args=(prompt, 200, times, key)) for key in ("first", "second")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    (start_a, end_a, chunks_a), (start_b, end_b, chunks_b) = times["first"], times["second"]
    assert chunks_a > 50 and chunks_b > 50, "both generations ran long enough to overlap"
    # Served one after the other, one would start only after the other ended.
    assert start_a < end_b and start_b < end_a, times


def test_bad_requests(local_llm):
    url = f"http://127.0.0.1:{PORT}"
    assert requests.post(f"{url}/api/generate", data="{nope", timeout=5).status_code == 400
    assert requests.post(f"{url}/api/chat", json={"messages": "hi"}, timeout=5).status_code == 400
    assert (
        requests.post(
            f"{url}/api/generate", json={"prompt": "hi", "options": {"num_predict": "x"}}, timeout=5
        ).status_code
        == 400
    )
