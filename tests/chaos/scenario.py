"""A chaos scenario is data: which faults, in which order, and how many questions each one meets.

    CHAOS_SCENARIO=bounded|full   (default bounded: what `make test` runs; `make chaos` runs full)
    CHAOS_FAULTS=kafka,poison     (optional: only the faults whose name contains one of these)
    CHAOS_QUESTIONS=11            (questions asked just before each fault; default one per chain, two if full)

For each fault in turn: ask its batch, wait until the batch is in flight (or the state the fault
targets), inject, hold, heal, then wait until the broken part and the pipeline are healthy again.
The questions of earlier faults keep flowing meanwhile. At the end every question must finish.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import requests

from tests.chaos.chains import REFERENCE, Chain, Limits, Question, new_question, slowed
from tests.chaos.faults import (
    Fault,
    FaultContext,
    freeze_kafka,
    kill,
    poison_every_topic,
    rebalance_while_held,
    stop_for,
    wait_armed,
)
from tests.chaos.observe import (
    GROUP_OF_PROGRAM,
    OutcomeWatch,
    flink_job_running,
    groups_short_of_members,
    http_ok,
    not_running,
    pipeline_healthy,
    processes,
    wait_for,
)
from tests.conftest import Stack, supervisorctl

RECOVERY_S = 120  # after the heal: the part back and the pipeline healthy (JobManager: job resubmitted)
ACCEPT_S = 60  # a POST answered 503 while a dependency recovers is asked again until then

KILLED_IN_TURN = (
    "llm-consumer",
    "retry-overload-consumer",
    "retry-quota-consumer",
    "storage-consumer",
    "storage-service",
    "score-validator",
    "flink-taskmanager",
    "flink-jobmanager",
    "flink-job-watchdog",  # only when the stack runs one
    "redis",
    "postgres",
    "kafka",
)
BOUNDED = (
    "SIGKILL llm-consumer",
    "SIGKILL storage-consumer",
    "SIGKILL flink-jobmanager",
    "Kafka SIGSTOP",
    "poison",
    "rebalance",
)


def every_fault(programs: set[str]) -> list[Fault]:
    # The LLM consumers die in the middle of slow calls: the call in hand is the one redelivered.
    kills = [kill(p, llm_delay_s=1.5 if p == "llm-consumer" else 0.0) for p in KILLED_IN_TURN if p in programs]
    return [
        *kills,
        freeze_kafka(),
        stop_for("postgres"),
        stop_for("score-validator"),
        poison_every_topic(),
        rebalance_while_held(),
    ]


def choose_faults(env: dict, programs: set[str]) -> tuple[str, list[Fault]]:
    """The scenario's name and faults, from CHAOS_SCENARIO / CHAOS_FAULTS."""
    faults = every_fault(programs)
    wanted = [w.strip().lower() for w in env.get("CHAOS_FAULTS", "").split(",") if w.strip()]
    name = env.get("CHAOS_SCENARIO", "bounded")
    if wanted:
        name = "custom"
    elif name == "bounded":
        wanted = [w.lower() for w in BOUNDED]
    elif name != "full":
        raise ValueError(f"CHAOS_SCENARIO must be bounded or full, not {name!r}")
    if wanted:
        faults = [f for f in faults if any(w in f.name.lower() for w in wanted)]
    return name, faults


def questions_per_fault(env: dict, chains: list[Chain], scenario: str) -> int:
    """One question per chain for each fault; two in the full run."""
    return int(env.get("CHAOS_QUESTIONS", len(chains) * (2 if scenario == "full" else 1)))


@dataclass
class FaultRun:
    fault: str
    questions: list[Question]
    rejected: int  # POSTs never accepted within ACCEPT_S (not counted as questions)
    recovery_s: float | None
    problems: list[str]


def ask(stack: Stack, fake_llm, question: Question) -> Question | None:
    """POST the question until it is accepted (202); None if it never is."""
    fake_llm.script(question.marker, *question.chain.replies)

    def post_once() -> str | None:
        try:
            resp = requests.post(
                f"{stack.storage_url}/query",
                json={"question_text": question.text, "original_answer": REFERENCE},
                timeout=10,
            )
        except requests.RequestException:
            return None
        return resp.json()["question_id"] if resp.status_code == 202 else None

    deadline = time.monotonic() + ACCEPT_S
    while time.monotonic() < deadline:
        question_id = post_once()
        if question_id:
            return replace(question, question_id=question_id)
        time.sleep(1)
    return None


def ask_batch(stack: Stack, fake_llm, watch: OutcomeWatch, fault: Fault, chains: list[Chain], count: int):
    by_name = {c.name: c for c in chains}
    wanted = [chains[i % len(chains)] for i in range(count)] + [by_name[n] for n in fault.extra_chains]
    if fault.llm_delay_s:
        wanted = [slowed(chain, fault.llm_delay_s) for chain in wanted]
    asked = [ask(stack, fake_llm, new_question(fault.name, chain)) for chain in wanted]
    batch = [q for q in asked if q is not None]
    for q in batch:
        watch.watch(q.question_id)
    return batch, len(asked) - len(batch)


def restore_stack(stack: Stack, expected_alive: set[str]) -> None:
    """Put back whatever a fault left broken: thaw Kafka, start every process that should run and does
    not, restart the consumers of a group that lost its members. (A missing Flink job is the
    watchdog's to resubmit; the suite reports it, it does not do it.)"""
    supervisorctl("signal", "CONT", "kafka")
    for name in sorted(not_running(expected_alive)):
        supervisorctl("start", name)
    short = groups_short_of_members(stack, expected_alive)
    for program, group in GROUP_OF_PROGRAM.items():
        if group in short:
            supervisorctl("restart", f"{program}:*" if program == "llm-consumer" else program)


def run_fault(
    stack: Stack,
    fake_llm,
    watch: OutcomeWatch,
    fault: Fault,
    chains: list[Chain],
    count: int,
    expected_alive: set[str],
) -> FaultRun:
    batch, rejected = ask_batch(stack, fake_llm, watch, fault, chains, count)
    ctx = FaultContext(stack=stack, fake_llm=fake_llm, batch=batch, watch=watch)
    wait_armed(fault, ctx)
    try:
        fault.inject(ctx)
        if fault.hold_s:
            time.sleep(fault.hold_s)  # the fault itself is a duration
    finally:
        fault.heal(ctx)
    took = wait_for(
        lambda: (
            fault.recovered(ctx)
            and pipeline_healthy(stack)
            and not not_running(expected_alive)
            and not groups_short_of_members(stack, expected_alive)
        ),
        RECOVERY_S,
        interval_s=1,
    )
    if took is None:
        ctx.problems.append(f"not recovered within {RECOVERY_S} s: {what_is_down(stack, expected_alive)}")
        restore_stack(stack, expected_alive)
    return FaultRun(fault.name, batch, rejected, took, ctx.problems)


def what_is_down(stack: Stack, expected_alive: set[str]) -> str:
    down = [f"{name} {state}" for name, state in not_running(expected_alive).items()]
    if not flink_job_running(stack):
        down.append("Flink job not RUNNING")
    down += [f"group {group}: {what}" for group, what in groups_short_of_members(stack, expected_alive).items()]
    for name, url in (("storage_service", stack.storage_url), ("score_validator", stack.scorer_url)):
        if not http_ok(f"{url}/health"):
            down.append(f"{name} /health not 200")
    return ", ".join(down) or "the fault's own check"


def running_programs() -> set[str]:
    return {name for name, p in processes().items() if p.state == "RUNNING"}


def programs_configured() -> set[str]:
    return {name.split(":")[0] for name in processes()}


def limits_of(stack: Stack) -> Limits:
    return Limits.from_env(stack.env)


def chaos_env() -> dict:
    return {k: v for k, v in os.environ.items() if k.startswith("CHAOS_")}
