"""The faults, each a small named inject/heal pair; a scenario is a list of them (tests/chaos/scenario.py).

`inject` breaks one thing; `heal` undoes it and must be safe to call twice (the scenario calls it again
in a `finally`, so a failed assertion never leaves Kafka frozen or a program stopped); `recovered` is
polled after the heal until the broken part is back. Holding a fault for its duration is the only sleep.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

import redis
from common import topics
from tests.chaos.chains import Question, holds_a_quota_retry
from tests.chaos.observe import (
    OutcomeWatch,
    flink_job_running,
    http_ok,
    pids_of,
    processes,
    taskmanager_ids,
    wait_for,
)
from tests.conftest import Stack, supervisorctl
from tests.fake_ollama import FakeOllama

KAFKA_SESSION_TIMEOUT_S = 10  # common/kafka.py consumer_config: session.timeout.ms


@dataclass
class FaultContext:
    stack: Stack
    fake_llm: FakeOllama
    batch: list[Question]
    watch: OutcomeWatch
    scratch: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what went wrong beyond the questions' fate


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[FaultContext], object]
    heal: Callable[[FaultContext], object] = lambda ctx: None
    hold_s: float = 0.0
    recovered: Callable[[FaultContext], bool] = lambda ctx: True
    # Polled before injecting, up to a deadline: the state the fault is meant to hit (work in flight).
    armed: Callable[[FaultContext], bool] = lambda ctx: True
    extra_chains: tuple[str, ...] = ()  # chain names added to this fault's batch (tests/chaos/chains.py)
    llm_delay_s: float = 0.0  # every reply of the batch this slow, so the fault meets calls in progress


# ------------------------------------------------------------------------------------------------
# Readiness of each part, as a client of it would see it.


def kafka_answers(stack: Stack) -> bool:
    try:
        AdminClient({"bootstrap.servers": stack.kafka_bootstrap}).list_topics(timeout=3)
        return True
    except KafkaException:
        return False


def postgres_answers(stack: Stack) -> bool:
    try:
        with psycopg.connect(stack.database_url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def redis_answers(stack: Stack) -> bool:
    try:
        return bool(redis.Redis.from_url(stack.redis_url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def taskmanager_replaced(ctx: FaultContext) -> bool:
    """The killed TaskManager is gone from the cluster, a new one registered, and the job runs on it
    (before Flink notices the loss, the job still looks RUNNING)."""
    now = taskmanager_ids(ctx.stack)
    return bool(now) and not (now & ctx.scratch["taskmanagers"]) and flink_job_running(ctx.stack)


READY: dict[str, Callable[[FaultContext], bool]] = {
    "kafka": lambda ctx: kafka_answers(ctx.stack),
    "postgres": lambda ctx: postgres_answers(ctx.stack),
    "redis": lambda ctx: redis_answers(ctx.stack),
    "flink-jobmanager": lambda ctx: flink_job_running(ctx.stack),
    "flink-taskmanager": taskmanager_replaced,
    "flink-job-watchdog": lambda ctx: flink_job_running(ctx.stack),
    "score-validator": lambda ctx: http_ok(f"{ctx.stack.scorer_url}/health"),
    "storage-service": lambda ctx: http_ok(f"{ctx.stack.storage_url}/health"),
}


def in_flight(ctx: FaultContext, at_least: int = 1) -> bool:
    """At least one question of the batch has reached the LLM: the fault hits work in progress."""
    return sum(1 for q in ctx.batch if ctx.fake_llm.calls_for(q.marker)) >= at_least


# ------------------------------------------------------------------------------------------------
# SIGKILL of one program (supervisord restarts it, as it would after a crash).


def kill(program: str, llm_delay_s: float = 0.0) -> Fault:
    target = f"{program}:*" if program == "llm-consumer" else program

    def inject(ctx: FaultContext) -> None:
        ctx.scratch["pids"] = pids_of(program)
        ctx.scratch["taskmanagers"] = taskmanager_ids(ctx.stack)
        supervisorctl("signal", "KILL", target)

    def recovered(ctx: FaultContext) -> bool:
        now = processes()
        restarted = all(
            name in now and now[name].state == "RUNNING" and now[name].pid != old_pid
            for name, old_pid in ctx.scratch["pids"].items()
        )
        return restarted and READY.get(program, lambda _ctx: True)(ctx)

    return Fault(f"SIGKILL {program}", inject, recovered=recovered, armed=in_flight, llm_delay_s=llm_delay_s)


# ------------------------------------------------------------------------------------------------
# Kafka frozen (SIGSTOP) past the consumers' session timeout: every group loses its members.


def freeze_kafka(hold_s: float = KAFKA_SESSION_TIMEOUT_S + 5) -> Fault:
    return Fault(
        f"Kafka SIGSTOP {hold_s:.0f} s",
        inject=lambda ctx: supervisorctl("signal", "STOP", "kafka"),
        heal=lambda ctx: supervisorctl("signal", "CONT", "kafka"),
        hold_s=hold_s,
        recovered=lambda ctx: kafka_answers(ctx.stack),
        armed=in_flight,
    )


# ------------------------------------------------------------------------------------------------
# A program stopped for a while (orderly stop, then start).


def stop_for(program: str, hold_s: float = 30) -> Fault:
    def heal(ctx: FaultContext) -> None:
        if processes().get(program) and processes()[program].state != "RUNNING":
            supervisorctl("start", program)

    return Fault(
        f"{program} stopped {hold_s:.0f} s",
        inject=lambda ctx: supervisorctl("stop", program),
        heal=heal,
        hold_s=hold_s,
        recovered=READY[program],
        armed=in_flight,
    )


# ------------------------------------------------------------------------------------------------
# Poison on every consumed topic. Keys never name a real question: poison must not end one.

CONSUMED_TOPICS = (
    topics.QUESTIONS_PENDING,
    topics.LLM_RESPONSES_SUCCESS,
    topics.ERRORS_OVERLOAD,
    topics.ERRORS_QUOTA,
    topics.VALIDATED_RESPONSES,
    topics.LOW_QUALITY_RESPONSES,
    topics.LLM_RESPONSES_ERROR,
    topics.DEAD_LETTER,
)


def poison_values() -> dict[str, bytes | None]:
    return {
        "deep nesting": b"[" * 4000,
        "random binary": os.urandom(2048),
        "oversize": os.urandom(300 * 1024),
        "null value": None,
    }


def poison_every_topic() -> Fault:
    def inject(ctx: FaultContext) -> None:
        ctx.scratch["pids"] = {name: p.pid for name, p in processes().items() if p.state == "RUNNING"}
        ctx.scratch["since"] = time.monotonic()
        producer = Producer({"bootstrap.servers": ctx.stack.kafka_bootstrap, "message.max.bytes": 2_000_000})
        failures: list[str] = []

        def on_delivery(err, msg) -> None:
            if err is not None:
                failures.append(f"{msg.topic()}: {err}")

        for topic in CONSUMED_TOPICS:
            for value in poison_values().values():
                key = f"chaos-poison-{uuid.uuid4().hex[:8]}".encode()
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
        producer.flush(30)
        if failures:
            ctx.problems.append(f"the broker refused some poison: {failures}")

    def recovered(ctx: FaultContext) -> bool:
        # The batch behind the poison finishing means the poison was consumed; nothing may have restarted.
        done = ctx.watch.terminal_count([q.question_id for q in ctx.batch]) == len(ctx.batch)
        if not done and time.monotonic() - ctx.scratch["since"] < 90:
            return False
        now = processes()
        restarted = sorted(n for n, pid in ctx.scratch["pids"].items() if n not in now or now[n].pid != pid)
        if restarted:
            ctx.problems.append(f"restarted after the poison: {', '.join(restarted)}")
        return True

    return Fault("poison on every consumed topic", inject, recovered=recovered, armed=in_flight)


# ------------------------------------------------------------------------------------------------
# A forced rebalance while a retry consumer holds a partition paused: extra members join the groups
# (reading without committing, so whatever they read is delivered again), then leave.

REBALANCED_GROUPS = {
    topics.GROUP_RETRY_QUOTA: topics.ERRORS_QUOTA,
    topics.GROUP_RETRY_OVERLOAD: topics.ERRORS_OVERLOAD,
    topics.GROUP_LLM_CONSUMER: topics.QUESTIONS_PENDING,
}


def _extra_member(bootstrap: str, group: str, topic: str, stop: threading.Event) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": f"chaos-extra-{group}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": KAFKA_SESSION_TIMEOUT_S * 1000,
            "partition.assignment.strategy": "cooperative-sticky",  # the group's own protocol
        }
    )
    consumer.subscribe([topic])
    try:
        while not stop.is_set():
            consumer.poll(0.2)  # whatever it reads is dropped uncommitted: the group gets it again
    finally:
        consumer.close()


def quota_retry_held(ctx: FaultContext) -> bool:
    """A 429 was just answered: its message now waits, paused, in the quota retry consumer."""
    return any(
        holds_a_quota_retry(q.chain) and any(c.outcome == "status 429" for c in ctx.fake_llm.calls_for(q.marker))
        for q in ctx.batch
    )


def rebalance_while_held(hold_s: float = 12) -> Fault:
    def inject(ctx: FaultContext) -> None:
        stop = threading.Event()
        members = [
            threading.Thread(target=_extra_member, args=(ctx.stack.kafka_bootstrap, group, topic, stop), daemon=True)
            for group, topic in REBALANCED_GROUPS.items()
        ]
        for member in members:
            member.start()
        ctx.scratch["members"], ctx.scratch["stop"] = members, stop

    def heal(ctx: FaultContext) -> None:
        if "stop" in ctx.scratch:
            ctx.scratch["stop"].set()
            for member in ctx.scratch["members"]:
                member.join(30)

    return Fault(
        "rebalance while a partition is held",
        inject,
        heal=heal,
        hold_s=hold_s,
        armed=quota_retry_held,
        # More quota retries in flight: more partitions of errors-quota paused when the group rebalances.
        extra_chains=("429-then-pass",) * 6,
    )


def wait_armed(fault: Fault, ctx: FaultContext, timeout_s: float = 45) -> None:
    if wait_for(lambda: fault.armed(ctx), timeout_s, interval_s=0.2) is None:
        ctx.problems.append(f"not armed within {timeout_s:.0f} s (injected anyway)")
