"""Both LLM clients over real HTTP (the fake LLM server), and how their failures are classified."""

from __future__ import annotations

import socket

import pytest

from common.policy import FailureKind, classify_llm_failure
from llm_consumer.clients import LLMFailure, OllamaClient, OpenAIClient, build_prompt
from tests.fake_ollama import Answer, Fail, start_fake_ollama


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fake():
    port = free_port()
    fake, server = start_fake_ollama(port)
    fake.base_url = f"http://127.0.0.1:{port}"
    yield fake
    server.shutdown()


def clients(base_url: str, timeout_s: float = 2.0):
    return [
        OllamaClient(base_url, "m", timeout_s, {"temperature": 0}),
        OpenAIClient(base_url + "/v1", "m", timeout_s, temperature=0, max_tokens=32, api_key="k"),
    ]


def kind_of(failure: LLMFailure) -> FailureKind:
    return classify_llm_failure(failure.status, timed_out=failure.timed_out, unreachable=failure.unreachable)


@pytest.mark.parametrize("index", [0, 1], ids=["ollama", "openai"])
def test_answers(fake, index):
    client = clients(fake.base_url)[index]
    fake.script(f"answer-{index}", Answer("  Santiago.  "))
    generation = client.generate(client.request_body(build_prompt(f"Capital of Chile? answer-{index}")))
    assert generation.text == "Santiago." and generation.model == "m" and generation.latency_ms > 0


@pytest.mark.parametrize("index", [0, 1], ids=["ollama", "openai"])
@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (Fail(503), FailureKind.OVERLOAD),
        (Fail(429), FailureKind.QUOTA),
        (Fail(500), FailureKind.ERROR),
        (Answer("late", delay_s=3), FailureKind.OVERLOAD),  # past the client's 2 s timeout
        (Answer("   "), FailureKind.ERROR),  # an empty answer is an error, not a success
    ],
)
def test_failures_are_classified(fake, index, action, expected):
    client = clients(fake.base_url)[index]
    marker = f"case-{index}-{id(action)}"
    fake.script(marker, action)
    with pytest.raises(LLMFailure) as failure:
        client.generate(client.request_body(f"question {marker}"))
    assert kind_of(failure.value) is expected


@pytest.mark.parametrize("index", [0, 1], ids=["ollama", "openai"])
def test_nothing_listening_is_overload(index):
    client = clients(f"http://127.0.0.1:{free_port()}")[index]
    with pytest.raises(LLMFailure) as failure:
        client.generate(client.request_body("anyone?"))
    assert failure.value.unreachable and kind_of(failure.value) is FailureKind.OVERLOAD
