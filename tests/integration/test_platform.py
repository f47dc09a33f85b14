"""Each real component of the native platform, proven on its own."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
import uuid
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

import redis
from common import topics
from common.flink_rest import SCORE_JOB_NAME, list_jobs
from tests.conftest import STATE, wait_until


def consume(bootstrap: str, topic: str, count: int, timeout_s: float = 60) -> list:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    got = []
    try:
        wait_until(
            lambda: (
                ((msg := consumer.poll(0.5)) is not None and not msg.error() and got.append(msg)) or len(got) >= count
            ),
            timeout_s,
            interval_s=0,
            what=f"{count} messages on {topic}",
        )
    finally:
        consumer.close()
    return got


def temporary_topics(bootstrap: str, *names: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, num_partitions=1, replication_factor=1) for n in names]).values():
        future.result(15)


def test_kafka_round_trip_and_auto_create_is_off(stack):
    topic = f"it-roundtrip-{uuid.uuid4().hex[:8]}"
    temporary_topics(stack.kafka_bootstrap, topic)
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(10) == 0
    [msg] = consume(stack.kafka_bootstrap, topic, 1)
    assert (msg.key(), msg.value()) == (b"k", b"hello")

    metadata = AdminClient({"bootstrap.servers": stack.kafka_bootstrap}).list_topics(timeout=10)
    assert f"never-created-{uuid.uuid4().hex}" not in metadata.topics


def test_every_design_topic_exists_with_three_partitions(stack):
    metadata = AdminClient({"bootstrap.servers": stack.kafka_bootstrap}).list_topics(timeout=10)
    for name in topics.ALL_TOPICS:
        assert name in metadata.topics, name
        assert len(metadata.topics[name].partitions) >= 3, name


def test_postgres_schema_is_present(stack):
    with psycopg.connect(stack.database_url) as conn:
        tables = {
            r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        }
        assert {"questions", "attempts", "failures"} <= tables
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'questions'")}
        assert "questions_status_idx" in indexes


def test_redis_evicts_least_recently_used_keys(stack):
    client = redis.Redis.from_url(stack.redis_url)
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
    assert int(client.config_get("maxmemory")["maxmemory"]) > 0


def test_flink_cluster_runs_a_pyflink_kafka_job(stack):
    rest = stack.flink_url
    overview = json.load(urllib.request.urlopen(f"{rest}/overview", timeout=5))
    assert overview["taskmanagers"] >= 1 and overview["slots-available"] >= 1

    suffix = uuid.uuid4().hex[:8]
    source, sink, job_name = f"it-flink-in-{suffix}", f"it-flink-out-{suffix}", f"it-passthrough-{suffix}"
    temporary_topics(stack.kafka_bootstrap, source, sink)
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    for word in ("kafka", "flink"):
        producer.produce(source, value=word.encode())
    producer.flush(10)

    pyflink_bin = (
        subprocess.run(
            [
                str(STATE / "venv" / "bin" / "python"),
                "-c",
                "import os, pyflink; print(os.path.dirname(pyflink.__file__))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        + "/bin/flink"
    )
    env = {
        **os.environ,
        "FLINK_CONF_DIR": str(STATE / "test-stack" / "flink" / "conf"),
        "TMPDIR": str(STATE / "test-stack" / "flink" / "tmp"),
    }
    subprocess.run(
        [
            pyflink_bin,
            "run",
            "-d",
            "-py",
            str(Path(__file__).with_name("flink_passthrough_job.py")),
            stack.kafka_bootstrap,
            source,
            sink,
            job_name,
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=180,
    )
    try:
        values = sorted(m.value() for m in consume(stack.kafka_bootstrap, sink, 2, timeout_s=120))
        assert values == [b"FLINK", b"KAFKA"]
    finally:
        jobs = json.load(urllib.request.urlopen(f"{rest}/jobs/overview", timeout=5))["jobs"]
        for job in jobs:
            if job["name"] == job_name and job["state"] == "RUNNING":
                urllib.request.urlopen(urllib.request.Request(f"{rest}/jobs/{job['jid']}?mode=cancel", method="PATCH"))


def test_score_validator_job_is_running(stack):
    jobs = list_jobs(stack.flink_url)
    assert any(j["name"] == SCORE_JOB_NAME and j["state"] == "RUNNING" for j in jobs)


def test_topics_grow_to_kafka_partitions_and_never_shrink(stack):
    from common.kafka import ensure_topics, grow_partitions

    small, large = f"it-grow-{uuid.uuid4().hex[:8]}", f"it-keep-{uuid.uuid4().hex[:8]}"
    assert set(ensure_topics(stack.kafka_bootstrap, [small], partitions=1)) == {small}
    ensure_topics(stack.kafka_bootstrap, [large], partitions=5)
    assert grow_partitions(stack.kafka_bootstrap, [small, large], partitions=3) == [small]
    listed = AdminClient({"bootstrap.servers": stack.kafka_bootstrap}).list_topics(timeout=10).topics
    assert (len(listed[small].partitions), len(listed[large].partitions)) == (3, 5)
    assert grow_partitions(stack.kafka_bootstrap, [small, large], partitions=3) == []  # already there
