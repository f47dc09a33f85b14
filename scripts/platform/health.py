"""Health waits: is each part of a stack up? Poll with a deadline, never a bare sleep."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

from scripts.platform.layout import Layout


def wait_for(what: str, check, timeout_s: float, interval_s: float = 0.5, layout: Layout | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last_error = "not ready"
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(interval_s)
    hint = f"; logs: {layout.path('logs')}" if layout else ""
    raise SystemExit(f"[stack] {what} not ready after {timeout_s:.0f}s ({last_error}){hint}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def http_json(url: str, timeout_s: float = 3.0):
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def kafka_ready(layout: Layout) -> bool:
    from confluent_kafka.admin import AdminClient

    AdminClient({"bootstrap.servers": layout.kafka_bootstrap}).list_topics(timeout=3)
    return True


def topic_partitions(layout: Layout, topic: str) -> int:
    """How many partitions `topic` has now (KAFKA_PARTITIONS, or more if it was raised before)."""
    from confluent_kafka.admin import AdminClient

    metadata = AdminClient({"bootstrap.servers": layout.kafka_bootstrap}).list_topics(topic=topic, timeout=5)
    return len(metadata.topics[topic].partitions)


def group_member_count(layout: Layout, group: str) -> int:
    """How many consumers are members of `group` now, as the broker sees it."""
    from confluent_kafka.admin import AdminClient

    from common.kafka import group_members

    members = group_members(AdminClient({"bootstrap.servers": layout.kafka_bootstrap}), group)
    if members is None:
        raise RuntimeError(f"the broker did not describe group {group}")
    return len(members)


def consumer_group_summary(members: int, consumers: int, partitions: int) -> str:
    """`make status`'s line on the LLM consumers: how many are in their group, and how many of those
    can get work (one partition goes to one member)."""
    notes = []
    if members < consumers:
        notes.append(f"{consumers - members} not in it (starting? see llm-consumer-*.log)")
    if members > partitions:
        notes.append(f"{members - partitions} idle (more consumers than partitions: KAFKA_PARTITIONS)")
    summary = f"{members}/{consumers} in the group, {partitions} partitions"
    return summary + (f"; {'; '.join(notes)}" if notes else "")


def postgres_ready(layout: Layout) -> bool:
    import psycopg

    with psycopg.connect(**postgres_superuser(layout), connect_timeout=3):
        return True


def postgres_superuser(layout: Layout) -> dict:
    """How the stack itself connects to its cluster: the socket, as `postgres`, with its password."""
    return {
        "host": str(layout.path("postgres", "run")),
        "port": layout.postgres_port,
        "user": "postgres",
        "password": layout.postgres_superuser_password,
        "dbname": "postgres",
    }


def redis_ready(layout: Layout) -> bool:
    import redis

    return bool(redis.Redis.from_url(layout.redis_url, socket_timeout=2).ping())


def flink_ready(layout: Layout) -> bool:
    return http_json(f"{layout.flink_rest_url}/overview")["taskmanagers"] >= layout.taskmanagers


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return resp.status == 200


def ollama_answers(url: str) -> bool:
    try:
        return http_ok(f"{url}/api/version")
    except (urllib.error.URLError, OSError):
        return False


def scrape_health(layout: Layout) -> str:
    """What the stack's Prometheus says of its targets: how many are up, and the ones that are not."""
    try:
        targets = http_json(f"{layout.prometheus_url}/api/v1/targets?state=active")["data"]["activeTargets"]
    except (OSError, ValueError, KeyError) as exc:
        return f"UNKNOWN (Prometheus unreachable: {exc})"
    down = sorted(
        f"{t['labels'].get('service', '?')} ({t['labels']['instance']})" for t in targets if t["health"] != "up"
    )
    summary = f"{len(targets) - len(down)}/{len(targets)} targets up"
    return summary + (f"; not up: {', '.join(down)}" if down else "")
