"""What the chaos run watches: supervisord's processes, the services' health, the Flink job, and every
question's row in PostgreSQL (the first terminal outcome seen, and any later change to it)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import psycopg
import requests
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from common import topics
from common.flink_rest import SCORE_JOB_NAME, list_jobs
from common.topics import Status
from tests.conftest import Stack, supervisorctl

TERMINAL = {s.value for s in (Status.VALIDATED, Status.LOW_QUALITY, Status.FAILED)}


@dataclass(frozen=True)
class Process:
    name: str  # as supervisorctl names it: "kafka", "llm-consumer:llm-consumer-0"
    state: str
    pid: int | None


def processes() -> dict[str, Process]:
    """supervisorctl status, parsed: name -> state and pid."""
    table = {}
    for line in supervisorctl("status").splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        pid = int(parts[3].rstrip(",")) if len(parts) > 3 and parts[2] == "pid" else None
        table[parts[0]] = Process(parts[0], parts[1], pid)
    return table


def program_of(process_name: str) -> str:
    return process_name.split(":")[0]


def pids_of(program: str) -> dict[str, int | None]:
    return {name: p.pid for name, p in processes().items() if program_of(name) == program}


def not_running(expected: set[str]) -> dict[str, str]:
    """Processes expected to run that do not: name -> state (FATAL, BACKOFF, STOPPED, ... or missing)."""
    table = processes()
    return {
        name: (table[name].state if name in table else "missing")
        for name in sorted(expected)
        if name not in table or table[name].state != "RUNNING"
    }


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=3).status_code == 200
    except requests.RequestException:
        return False


def flink_job_running(stack: Stack) -> bool:
    """The score job is RUNNING and so is every one of its tasks (not merely scheduled)."""
    try:
        jobs = [j for j in list_jobs(stack.flink_url, timeout_s=3) if j["name"] == SCORE_JOB_NAME]
        running = [j for j in jobs if j["state"] == "RUNNING"]
        if not running:
            return False
        detail = requests.get(f"{stack.flink_url}/jobs/{running[0]['jid']}", timeout=3).json()
        return all(v["status"] == "RUNNING" for v in detail["vertices"])
    except (OSError, ValueError, KeyError, requests.RequestException):
        return False


def taskmanager_ids(stack: Stack) -> set[str]:
    try:
        return {tm["id"] for tm in requests.get(f"{stack.flink_url}/taskmanagers", timeout=3).json()["taskmanagers"]}
    except (ValueError, KeyError, requests.RequestException):
        return set()


# The consumer group each supervised consumer program joins (common/topics.py).
GROUP_OF_PROGRAM = {
    "llm-consumer": topics.GROUP_LLM_CONSUMER,
    "retry-overload-consumer": topics.GROUP_RETRY_OVERLOAD,
    "retry-quota-consumer": topics.GROUP_RETRY_QUOTA,
    "storage-consumer": topics.GROUP_STORAGE,
}


def groups_short_of_members(stack: Stack, expected_alive: set[str]) -> dict[str, str]:
    """Groups with fewer members than running processes that should be in them: a process can be
    RUNNING yet outside its group for good (a consumer that never rejoined after a broker outage)."""
    wanted: dict[str, int] = {}
    for name in expected_alive:
        group = GROUP_OF_PROGRAM.get(program_of(name))
        if group:
            wanted[group] = wanted.get(group, 0) + 1
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    short = {}
    for group, future in admin.describe_consumer_groups(list(wanted), request_timeout=5).items():
        try:
            description = future.result()
            have, state = len(description.members), str(description.state)
        except KafkaException as exc:
            have, state = 0, f"unknown ({exc})"
        if have < wanted[group]:
            short[group] = f"{have} of {wanted[group]} members, state {state}"
    return short


def pipeline_healthy(stack: Stack) -> bool:
    return http_ok(f"{stack.storage_url}/health") and http_ok(f"{stack.scorer_url}/health") and flink_job_running(stack)


@dataclass(frozen=True)
class Outcome:
    status: str
    answer: str | None
    score: float | None
    attempts: int


@dataclass
class OutcomeWatch:
    """Polls PostgreSQL for the questions asked so far; keeps each one's first terminal outcome and
    every later outcome that differs from it (an overwrite)."""

    database_url: str
    interval_s: float = 0.5
    first_terminal: dict[str, Outcome] = field(default_factory=dict)
    latest: dict[str, Outcome] = field(default_factory=dict)
    overwrites: dict[str, list[Outcome]] = field(default_factory=dict)
    _ids: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def watch(self, question_id: str) -> None:
        with self._lock:
            self._ids.add(question_id)

    def start(self) -> OutcomeWatch:
        self._thread = threading.Thread(target=self._loop, name="chaos-outcome-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    def _loop(self) -> None:
        conn = None
        while not self._stop.wait(self.interval_s):
            try:
                conn = conn or psycopg.connect(self.database_url, connect_timeout=2, autocommit=True)
                self.poll_once(conn)
            except psycopg.Error:  # PostgreSQL is one of the things the run takes away
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def poll_once(self, conn) -> None:
        with self._lock:
            ids = list(self._ids)
        rows = conn.execute(
            "SELECT question_id, status, final_answer, final_score, attempts FROM questions"
            " WHERE question_id = ANY(%s)",
            (ids,),
        ).fetchall()
        for question_id, *values in rows:
            self.record(question_id, Outcome(*values))

    def record(self, question_id: str, outcome: Outcome) -> None:
        with self._lock:
            self.latest[question_id] = outcome
            if outcome.status not in TERMINAL:
                first = self.first_terminal.get(question_id)
                if first is not None:  # back to pending after a terminal outcome is an overwrite too
                    self.overwrites.setdefault(question_id, []).append(outcome)
                return
            first = self.first_terminal.setdefault(question_id, outcome)
            if outcome != first and outcome not in self.overwrites.get(question_id, []):
                self.overwrites.setdefault(question_id, []).append(outcome)

    def terminal_count(self, question_ids: list[str]) -> int:
        with self._lock:
            return sum(1 for q in question_ids if q in self.first_terminal)


def cached_answer(redis_url: str, question_id: str) -> str | None:
    """The validated answer Redis would serve (None: not cached)."""
    import redis

    raw = redis.Redis.from_url(redis_url, socket_timeout=2).get(f"answer:{question_id}")
    return json.loads(raw)["answer"] if isinstance(raw, bytes | str) and raw else None


def wait_for(check, timeout_s: float, interval_s: float = 0.5) -> float | None:
    """Poll `check` until true; the seconds it took, or None at the deadline (the caller reports it)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check():
            return time.monotonic() - start
        time.sleep(interval_s)
    return None
