"""What a client meets at the edges: bad input, unknown ids, garbage on a topic, the API
descriptions, and what the stack exposes (loopback only, passwords on PostgreSQL and Redis)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import uuid
from urllib.parse import urlparse

import psycopg
import pytest
import requests
from confluent_kafka import Producer

import redis
from common import topics
from common.web import openapi_document
from tests.conftest import STATE, first_message, native_stack, stack_command, unique, wait_until
from tests.fake_ollama import Answer

JSON = {"Content-Type": "application/json"}


def test_bad_inputs_get_json_errors(stack):
    url = f"{stack.storage_url}/query"
    cases = [
        (dict(data="question_text=hi", headers={"Content-Type": "application/x-www-form-urlencoded"}), 415),
        (dict(data="{not json", headers={"Content-Type": "application/json"}), 400),
        (dict(json=["a list"]), 400),
        (dict(json={}), 400),
        (dict(json={"question_text": 42}), 400),
        (dict(json={"question_text": "   "}), 400),
        (dict(json={"question_text": "ok?", "original_answer": ["x"]}), 400),
        (dict(json={"question_text": "ok?"}), 400),  # every answer is scored against a reference
        (dict(json={"question_text": "a\x00b", "original_answer": "x"}), 400),
        (dict(data='{"question_text": "\\ud800", "original_answer": "x"}', headers=JSON), 400),
        (dict(data="[" * 30_000 + "]" * 30_000, headers=JSON), 400),
        (dict(data='{"question_text": NaN, "original_answer": "x"}', headers=JSON), 400),
        (dict(json={"question_text": "x" * 5000}), 413),
        (dict(data=json.dumps({"question_text": "x" * 100_000}), headers={"Content-Type": "application/json"}), 413),
    ]
    for kwargs, expected in cases:
        resp = requests.post(url, timeout=10, **kwargs)
        assert resp.status_code == expected, (str(kwargs)[:200], resp.status_code, resp.text[:200])
        assert resp.headers["Content-Type"].startswith("application/json")
        assert set(resp.json()) == {"error", "message"} and "Traceback" not in resp.text
    before = requests.get(f"{stack.storage_url}/metrics", timeout=10).json()["db_errors"]
    resp = requests.get(f"{stack.storage_url}/status/ab%00cd", timeout=10)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_url"
    assert requests.get(f"{stack.storage_url}/metrics", timeout=10).json()["db_errors"] == before


def test_the_scorer_refuses_bad_input_with_json_errors(stack):
    cases = [
        ("/score", dict(json={"candidate": "a\x00", "reference": "b"}), 400),
        ("/score", dict(data='{"candidate": "\\udfff", "reference": "b"}', headers=JSON), 400),
        ("/score", dict(data="[" * 30_000 + "]" * 30_000, headers=JSON), 400),
        ("/score", dict(data="candidate=a", headers={"Content-Type": "text/plain"}), 415),
        ("/score/batch", dict(json={"pairs": [{"candidate": "a", "reference": "b"}] * 257}), 413),
        ("/score/batch", dict(json={"pairs": [7]}), 400),
    ]
    for path, kwargs, expected in cases:
        resp = requests.post(f"{stack.scorer_url}{path}", timeout=30, **kwargs)
        assert resp.status_code == expected, (path, str(kwargs)[:200], resp.status_code, resp.text[:200])
        assert set(resp.json()) == {"error", "message"}


@pytest.mark.parametrize("service, spec", [("storage_url", "storage_service"), ("scorer_url", "score_validator")])
def test_both_apis_serve_their_openapi_description(stack, service, spec):
    resp = requests.get(f"{getattr(stack, service)}/openapi.json", timeout=10)
    assert resp.status_code == 200 and resp.json() == openapi_document(spec)


def test_unknown_question_and_route(stack):
    resp = requests.get(f"{stack.storage_url}/status/{uuid.uuid4().hex}", timeout=10)
    assert resp.status_code == 404 and resp.json()["error"] == "not_found"
    assert requests.get(f"{stack.storage_url}/nope", timeout=10).status_code == 404
    assert requests.get(f"{stack.storage_url}/query", timeout=10).status_code == 405


def test_health_reports_dependencies(stack):
    body = requests.get(f"{stack.storage_url}/health", timeout=10).json()
    assert body["status"] == "healthy"
    assert body["checks"] == {"postgres": "ok", "kafka": "ok", "redis": "ok", "flink_job": "ok"}


def stack_pids(name: str) -> set[int]:
    """supervisord of stack `name` and every process below it."""
    root = int((STATE / name / "run" / "supervisord.pid").read_text())
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:  # gone meanwhile
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def listening_sockets() -> list[tuple[str, int, set[int]]]:
    """(address, port, owning pids) of every listening TCP socket, from `ss -ltnpH`."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    sockets = []
    for line in out.splitlines():
        address, port = line.split()[3].rsplit(":", 1)
        pids = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        sockets.append((address.strip("[]").split("%")[0], int(port), pids))
    return sockets


def is_loopback(address: str) -> bool:
    if address == "*":
        return False
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def test_nothing_of_the_stack_listens_beyond_loopback(stack):
    """`ss -ltnp` during a running stack: every socket of its processes on 127.0.0.1 or ::1."""
    pids = stack_pids("test-stack")
    ours = [(address, port) for address, port, owners in listening_sockets() if owners & pids]
    expected = set(native_stack().Layout("test-stack", stack.env).ports().values())
    assert expected <= {port for _, port in ours}, ("the stack's own ports must be among its sockets", ours)
    exposed = sorted((address, port) for address, port in ours if not is_loopback(address))
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_postgres_and_redis_want_passwords(stack):
    password = urlparse(stack.redis_url).password
    assert password
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(stack.redis_url.replace(f":{password}@", "@")).ping()
    assert redis.Redis.from_url(stack.redis_url).ping()
    db = urlparse(stack.database_url)
    for user, guess in (("postgres", ""), ("postgres", "postgres"), (db.username, "wrong")):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(host="127.0.0.1", port=db.port, user=user, password=guess, dbname="postgres")
    socket_dir = STATE / "test-stack" / "postgres" / "run"
    with pytest.raises(psycopg.OperationalError, match="password"):  # no `trust` on the socket either
        psycopg.connect(host=str(socket_dir), port=db.port, user="postgres", dbname="postgres")
    with psycopg.connect(stack.database_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def dead_letter_raw_text(value: bytes | None) -> str | None:
    """The raw text a dead letter carries; None for anything else on the topic (other tests put
    poison there too: deep nesting, binary, null values)."""
    try:
        envelope = json.loads(value) if value else None
    except (ValueError, RecursionError):
        return None
    return envelope.get("raw_text") if isinstance(envelope, dict) else None


def test_garbage_goes_to_dead_letter_and_the_consumer_keeps_going(stack, fake_llm, ask, status_of):
    marker = uuid.uuid4().hex
    garbage = f"garbage-{marker}".encode()
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    producer.produce(topics.QUESTIONS_PENDING, key=b"not-a-question", value=garbage)
    producer.flush(10)

    found = first_message(
        stack.kafka_bootstrap,
        topics.DEAD_LETTER,
        lambda msg: dead_letter_raw_text(msg.value()) == garbage.decode(),
        60,
        what="the garbage on dead-letter",
    )
    envelope = json.loads(found.value())
    assert envelope["source_topic"] == topics.QUESTIONS_PENDING
    assert envelope["reason"].startswith("unparseable")

    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer("Santiago is the capital of Chile."))
    qid = ask(question, "The capital of Chile is Santiago.").json()["question_id"]
    wait_until(lambda: (s := status_of(qid)) and s["status"] == "validated", 120, what="a question after the garbage")


def test_make_down_mid_llm_call_then_up_redelivers_nothing(stack, fake_llm, ask, status_of):
    """`make down` while an LLM consumer waits on the LLM: services stop first, with a grace longer
    than LLM_TIMEOUT_S, so it gets its answer, produces, flushes and commits while Kafka is still up.
    After `make up` the question finishes from that answer: the LLM is not asked again."""
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer("Santiago is the capital of Chile.", delay_s=2.5))  # LLM_TIMEOUT_S is 3
    qid = ask(question, "The capital of Chile is Santiago.").json()["question_id"]
    wait_until(lambda: fake_llm.calls_for(question), 60, what="the LLM call to be in flight")
    stack_command("down", stack.env, timeout_s=600)
    assert len(fake_llm.calls_for(question)) == 1
    stack_command("up", stack.env)
    final = wait_until(
        lambda: (s := status_of(qid)) and s["status"] != "pending" and s, 240, what="the question after a restart"
    )
    assert final["status"] == "validated" and final["attempts"] == 1, final
    assert len(fake_llm.calls_for(question)) == 1, "the committed attempt was delivered again after `make up`"
