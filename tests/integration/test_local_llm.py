"""The embedded Ollama-compatible server, driven by the official `ollama` Python client, on the real
SmolLM2-135M model. Started here on its own port with a queue of zero waiting requests."""

from __future__ import annotations

import os
import subprocess
import sys

import ollama
import pytest
import requests

from tests.conftest import ROOT, wait_until

PORT = 11437


@pytest.fixture(scope="module")
def local_llm():
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OLLAMA_URL": f"http://127.0.0.1:{PORT}",
        "OLLAMA_MAX_QUEUE": "0",
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


def test_tags_and_version(local_llm):
    [model] = local_llm.list().models
    assert model.model == "smollm2:135m" and model.details.parameter_size == "135M"
    assert requests.get(f"http://127.0.0.1:{PORT}/api/version", timeout=5).json()["version"]


def test_full_queue_answers_503_like_ollama(local_llm):
    # A streaming generation whose first chunk has arrived holds the only slot (OLLAMA_MAX_QUEUE=0).
    with requests.post(
        f"http://127.0.0.1:{PORT}/api/generate",
        stream=True,
        timeout=60,
        json={"prompt": "Write a long story about the sea.", "options": {"num_predict": 60}},
    ) as busy:
        lines = busy.iter_lines()
        assert b'"done": false' in next(lines)
        with pytest.raises(ollama.ResponseError) as refused:
            local_llm.generate(model="smollm2:135m", prompt="Hi", options={"num_predict": 4})
        assert refused.value.status_code == 503
        assert "maximum pending requests exceeded" in refused.value.error
        for _ in lines:  # let the first generation finish
            pass
    assert local_llm.generate(model="smollm2:135m", prompt="Hi", options={"num_predict": 4}).done


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
