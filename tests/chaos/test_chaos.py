"""Issue 8, item 9: questions flow while every process kind is killed in turn, Kafka is frozen past the
session timeout, PostgreSQL and the scorer are stopped, poison lands on every consumed topic and the
groups rebalance while a partition is held. Then: every question reaches its expected terminal status,
no terminal row is overwritten, LLM calls stay within a small bound, every process is alive and the
Flink job runs. The table goes to bench-results/chaos-latest.md (README, "Fault injection").

Bounded by default (`make test`); `make chaos` sets CHAOS_SCENARIO=full (tests/chaos/scenario.py).
"""

from __future__ import annotations

import time

import redis
from tests.chaos import report
from tests.chaos.chains import catalogue
from tests.chaos.observe import (
    OutcomeWatch,
    cached_answer,
    flink_job_running,
    groups_short_of_members,
    not_running,
    pipeline_healthy,
    processes,
    wait_for,
)
from tests.chaos.scenario import (
    RECOVERY_S,
    chaos_env,
    choose_faults,
    limits_of,
    programs_configured,
    questions_per_fault,
    restore_stack,
    run_fault,
    running_programs,
)
from tests.conftest import ROOT

DRAIN_S = 300  # after the last fault, for every question to finish
SETTLE_S = 10  # then the rows are watched a little longer, for late overwrites


def test_nothing_lost_stuck_overwritten_or_dead_under_faults(stack, fake_llm, capsys):
    assert wait_for(lambda: pipeline_healthy(stack), 180) is not None, "the stack is not healthy before the run"
    expected_alive = running_programs()
    env = chaos_env()
    scenario, faults = choose_faults(env, programs_configured())
    chains = catalogue(limits_of(stack))
    per_fault = questions_per_fault(env, chains, scenario)
    watch = OutcomeWatch(stack.database_url).start()
    started, runs = time.monotonic(), []
    try:
        for fault in faults:
            runs.append(run_fault(stack, fake_llm, watch, fault, chains, per_fault, expected_alive))
        everyone = [q.question_id for run in runs for q in run.questions]
        wait_for(lambda: watch.terminal_count(everyone) == len(everyone), DRAIN_S, interval_s=1)
        time.sleep(SETTLE_S)  # an observation window: a late duplicate may still overwrite a row
    finally:
        watch.stop()
        dead = not_running(expected_alive)  # seen before the suite starts anything again
        outside = groups_short_of_members(stack, expected_alive)
        restore_stack(stack, expected_alive)  # whatever happened above: Kafka thawed, every process started

    rows = [report.account(run, watch, lambda m: len(fake_llm.calls_for(m)), cached_answer_of(stack)) for run in runs]
    broken = report.violations(rows)
    if dead:
        broken.append(f"processes not running at the end: {dead}")
    if outside:
        broken.append(f"consumer groups missing members at the end: {outside}")
    if wait_for(lambda: flink_job_running(stack), 30) is None:
        broken.append("the Flink job is not RUNNING at the end")
    settings = f"{len(faults)} faults, {per_fault} questions per fault (+ the faults' own extras), " + (
        f"caps from the test stack: MAX_ATTEMPTS={stack.env['MAX_ATTEMPTS']}, "
        f"RETRY_OVERLOAD_MAX_RETRIES={stack.env['RETRY_OVERLOAD_MAX_RETRIES']}, "
        f"RETRY_QUOTA_MAX_RETRIES={stack.env['RETRY_QUOTA_MAX_RETRIES']}, recovery deadline {RECOVERY_S} s"
    )
    text = report.document(rows, scenario, settings, broken, time.monotonic() - started)
    out = ROOT / "bench-results" / "chaos-latest.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    with capsys.disabled():
        print("\n" + text + f"(written to {out.relative_to(ROOT)}; processes: {len(processes())})")
    assert not broken, "\n".join(broken)


def cached_answer_of(stack):
    def cached(question_id: str) -> str | None:
        try:
            return cached_answer(stack.redis_url, question_id)
        except redis.RedisError:  # Redis unreachable at the end: nothing served, nothing to compare
            return None

    return cached
