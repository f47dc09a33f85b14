"""More LLM consumers as README "Scaling out" says: `LLM_CONSUMERS=3 make up` runs three llm-consumer
processes; each joins the `llm-consumer` group with a partition of its own (3 by default), serves its
metrics on its own port and is scraped by Prometheus; questions are answered by all three, validated,
each exactly once. The scripted LLM answers (tests/fake_ollama.py).

Run on its own stack (it needs the standard ports), after the other suites stopped theirs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import requests
from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from common import topics
from scripts.platform.layout import Layout
from scripts.platform.observability import llm_consumer_metrics_ports
from scripts.platform.processes import supervisorctl
from tests.conftest import FAKE_LLM_PORT, ROOT, TEST_ENV, stack_endpoints, wait_until
from tests.e2e.test_llm_concurrency import each_validated_once

STACK = "consumers-stack"
CONSUMERS = 3
CONSUMERS_ENV = {
    **TEST_ENV,
    "YAHOO_LLM_STACK": STACK,
    "OLLAMA_URL": f"http://127.0.0.1:{FAKE_LLM_PORT}",
    "LLM_CONSUMERS": str(CONSUMERS),
    "KAFKA_PARTITIONS": "3",
}
# Enough that every one of the 3 partitions gets questions (all keys on two of them: p < 1e-4).
QUESTIONS = 30


def stack_py(command: str, env: dict) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "stack.py"), "--name", STACK, command],
        env=env,
        check=True,
        timeout=900,
        capture_output=command == "status",
        text=True,
    )
    return result.stdout or ""


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def group_assignment(bootstrap: str) -> list[set[int]] | None:
    """The questions-pending partitions of each member of the llm-consumer group (None: not stable yet)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        description = admin.describe_consumer_groups([topics.GROUP_LLM_CONSUMER], request_timeout=5)[
            topics.GROUP_LLM_CONSUMER
        ].result()
    except KafkaException:  # the coordinator still loading: ask again
        return None
    if description.state != ConsumerGroupState.STABLE:
        return None
    return [
        {tp.partition for tp in member.assignment.topic_partitions if tp.topic == topics.QUESTIONS_PENDING}
        for member in description.members
    ]


def llm_successes(port: int) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "yahoo_llm_calls_total" and sample.labels.get("kind") == "success"
    )


def llm_targets_up(prometheus_url: str) -> list[str]:
    active = requests.get(f"{prometheus_url}/api/v1/targets?state=active", timeout=10).json()["data"]["activeTargets"]
    return sorted(
        t["labels"]["instance"] for t in active if t["labels"]["job"] == "llm-consumer" and t["health"] == "up"
    )


def test_three_llm_consumers_each_join_the_group_and_share_the_questions(fake_llm):
    env = {**os.environ, **CONSUMERS_ENV}
    layout = Layout(STACK, env)
    stack = stack_endpoints(layout, env)
    ports = llm_consumer_metrics_ports(CONSUMERS)
    assert list(ports.values()) == [9102, 9103, 9112]
    try:
        stack_py("up", env)
        status = supervisorctl(layout, "status", check=False).stdout
        for name in ports:
            assert any(line.split()[:2] == [f"llm-consumer:{name}", "RUNNING"] for line in status.splitlines()), status
        assignment = wait_until(
            lambda: (a := group_assignment(stack.kafka_bootstrap)) and len(a) == CONSUMERS and all(a) and a,
            120,
            interval_s=1,
            what=f"{CONSUMERS} members in the llm-consumer group, each with a partition",
        )
        assert sorted(p for member in assignment for p in member) == [0, 1, 2]  # one each, none shared
        assert "3/3 in the group, 3 partitions" in stack_py("status", env)
        expected_targets = sorted(f"localhost:{port}" for port in ports.values())
        wait_until(
            lambda: llm_targets_up(stack.prometheus_url) == expected_targets,
            60,
            interval_s=2,
            what="Prometheus scraping the three LLM consumers",
        )

        each_validated_once(stack, fake_llm, "three consumers", QUESTIONS)
        # Each consumer answered some of them: the work is shared, not merely the membership.
        assert all(llm_successes(port) > 0 for port in ports.values()), {p: llm_successes(p) for p in ports.values()}
    finally:
        stack_py("down", env)
    assert not [port for port in ports.values() if listening(port)]
