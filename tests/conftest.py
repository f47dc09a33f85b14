"""Session fixtures: the fake LLM, and the real stack (Kafka, PostgreSQL, Redis, Flink, services).

The stack runs as `test-stack` (its own state folder) on the standard ports, configured with short
retry delays. It is stopped at the end unless YAHOO_LLM_KEEP_TEST_STACK=1.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from functools import cache
from types import ModuleType

import pytest
import requests

from common.settings import PROJECT_ROOT, StackSettings
from scripts.platform.layout import Layout

ROOT = PROJECT_ROOT
STATE = StackSettings().state_dir
# The fake LLM's port (the test stack's OLLAMA_URL): a test-only knob, not a setting of the stack.
FAKE_LLM_PORT = int(os.environ.get("FAKE_LLM_PORT", "11435"))

TEST_ENV = {
    "YAHOO_LLM_STACK": "test-stack",
    "OLLAMA_URL": f"http://127.0.0.1:{FAKE_LLM_PORT}",
    "LLM_MODEL": "fake",
    "LLM_TIMEOUT_S": "3",
    "RETRY_OVERLOAD_BASE_DELAY_S": "1",
    "RETRY_OVERLOAD_MAX_RETRIES": "3",
    "RETRY_QUOTA_DELAY_S": "3",
    "RETRY_QUOTA_MAX_RETRIES": "2",
    "QUALITY_THRESHOLD": "0.75",
    "MAX_ATTEMPTS": "3",
}


@dataclass(frozen=True)
class Stack:
    storage_url: str
    scorer_url: str
    flink_url: str
    kafka_bootstrap: str
    database_url: str
    redis_url: str
    env: dict
    prometheus_url: str = ""


def wait_until(check, timeout_s: float, interval_s: float = 0.25, what: str = "condition"):
    """Poll `check` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


def first_message(bootstrap: str, topic: str, matches, timeout_s: float, what: str):
    """The first message on `topic` (read from the start, outside any pipeline group) that `matches`."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    try:

        def poll():
            msg = consumer.poll(0.5)
            return msg if msg is not None and not msg.error() and matches(msg) else None

        return wait_until(poll, timeout_s, interval_s=0, what=what)
    finally:
        consumer.close()


def terminal(status_of, question_id: str, timeout_s: float = 120) -> dict:
    """Wait for a question to leave `pending`; returns its /status body."""
    return wait_until(
        lambda: (s := status_of(question_id)) and s["status"] != "pending" and s,
        timeout_s,
        what=f"terminal status of {question_id}",
    )


def unique(text: str) -> str:
    """A question nobody asked before, with a marker the fake LLM can match."""
    return f"{text} [{uuid.uuid4().hex[:10]}]"


@pytest.fixture(scope="session")
def fake_llm():
    from tests.fake_ollama import start_fake_ollama

    fake, server = start_fake_ollama(FAKE_LLM_PORT)
    yield fake
    server.shutdown()


def _stack_cmd(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "stack.py"), "--name", "test-stack", *args]


def stack_command(command: str, env: dict, timeout_s: float = 900) -> None:
    """`scripts/stack.py --name test-stack <command>` (up, down), as `make` runs it."""
    subprocess.run(_stack_cmd(command), env=env, check=True, timeout=timeout_s)


@cache
def native_stack() -> ModuleType:
    """scripts/stack.py as a module (its `Layout` knows a stack's ports, URLs and passwords)."""
    spec = importlib.util.spec_from_file_location("native_stack", ROOT / "scripts" / "stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def stack_endpoints(layout: Layout, env: dict) -> Stack:
    """What a client of the stack described by `layout` uses (the passwords it generated included):
    StackSettings read from the stack's environment, as its processes read them."""
    return Stack(
        storage_url=layout.storage_url,
        scorer_url=layout.score_validator_url,
        flink_url=layout.flink_rest_url,
        kafka_bootstrap=layout.kafka_bootstrap,
        database_url=layout.database_url,
        redis_url=layout.redis_url,
        env=env,
        prometheus_url=layout.prometheus_url,
    )


@pytest.fixture(scope="session")
def stack(fake_llm) -> Stack:
    env = {**os.environ, **TEST_ENV}
    stack_command("up", env)
    yield stack_endpoints(Layout("test-stack", env), env)
    if os.environ.get("YAHOO_LLM_KEEP_TEST_STACK") != "1":
        subprocess.run(_stack_cmd("down"), env=env, check=False, timeout=300)


@pytest.fixture
def ask(stack):
    def _ask(question_text: str, original_answer: str = "", **kwargs) -> requests.Response:
        return requests.post(
            f"{stack.storage_url}/query",
            json={"question_text": question_text, "original_answer": original_answer},
            timeout=30,
            **kwargs,
        )

    return _ask


@pytest.fixture
def status_of(stack):
    def _status(question_id: str) -> dict | None:
        resp = requests.get(f"{stack.storage_url}/status/{question_id}", timeout=10)
        return resp.json() if resp.status_code == 200 else None

    return _status


def supervisorctl(*args: str) -> str:
    """Drive the test stack's processes as an operator would (stop, start, status)."""
    conf = STATE / "test-stack" / "supervisord.conf"
    return subprocess.run(
        [str(STATE / "venv" / "bin" / "supervisorctl"), "-c", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
