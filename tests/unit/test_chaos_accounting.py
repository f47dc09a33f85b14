"""The chaos suite's own decisions (tests/chaos), without a stack: what counts as an overwrite, lost,
stuck or an extra LLM call, and which faults a scenario runs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from common.topics import Status
from tests.chaos import report
from tests.chaos.chains import Limits, catalogue, new_question
from tests.chaos.observe import Outcome, OutcomeWatch
from tests.chaos.scenario import FaultRun, choose_faults

PROGRAMS = {
    "kafka",
    "postgres",
    "redis",
    "flink-jobmanager",
    "flink-taskmanager",
    "score-validator",
    "storage-service",
    "storage-consumer",
    "llm-consumer",
    "retry-overload-consumer",
    "retry-quota-consumer",
}
VALIDATED = Outcome("validated", "Santiago.", 0.9, 1)


def test_the_first_terminal_outcome_is_kept_and_a_later_different_one_is_an_overwrite():
    watch = OutcomeWatch("unused")
    watch.record("q", Outcome("pending", None, None, 0))
    watch.record("q", VALIDATED)
    watch.record("q", VALIDATED)
    assert watch.overwrites == {}
    watch.record("q", Outcome("low_quality", "Bananas.", 0.1, 3))
    assert watch.first_terminal["q"] == VALIDATED
    assert watch.overwrites["q"] == [Outcome("low_quality", "Bananas.", 0.1, 3)]


def test_back_to_pending_after_a_terminal_outcome_is_an_overwrite():
    watch = OutcomeWatch("unused")
    watch.record("q", VALIDATED)
    watch.record("q", Outcome("pending", None, None, 0))
    assert watch.overwrites["q"] == [Outcome("pending", None, None, 0)]


def test_chains_need_the_calls_their_caps_allow():
    chains = {c.name: c for c in catalogue(Limits(max_attempts=3, overload_retries=3, quota_retries=2))}
    assert chains["regenerate-to-cap"].calls == 3 and chains["regenerate-to-cap"].expected is Status.LOW_QUALITY
    assert chains["503-exhausted"].calls == 4 and chains["429-exhausted"].calls == 3
    assert chains["both-budgets-then-pass"].calls == 6
    assert chains["both-budgets-then-pass"].expected is Status.VALIDATED


def test_account_counts_lost_stuck_wrong_and_extra_calls():
    chains = {c.name: c for c in catalogue(Limits(3, 3, 2))}
    asked = {
        name: new_question("f", chains[name])
        for name in ("first-pass", "regenerate-to-cap", "500-permanent", "503-then-pass")
    }
    questions = [replace(q, question_id=f"id-{name}") for name, q in asked.items()]
    watch = OutcomeWatch("unused")
    watch.record("id-first-pass", VALIDATED)
    watch.record("id-regenerate-to-cap", Outcome("pending", None, None, 2))
    watch.record("id-500-permanent", Outcome("validated", "x", 0.8, 1))  # expected failed
    calls = {q.marker: 3 if q.chain.name == "first-pass" else q.chain.calls for q in questions}

    row = report.account(FaultRun("f", questions, 0, 1.0, []), watch, calls.__getitem__, lambda _q: None)

    assert len(row.lost) == 1 and "503-then-pass" in row.lost[0]
    assert len(row.stuck) == 1 and "regenerate-to-cap" in row.stuck[0]
    assert len(row.wrong) == 1 and "expected failed" in row.wrong[0]
    assert list(row.extra_calls.values()) == [2]
    broken = report.violations([row])
    assert any("LLM calls beyond its chain" in line for line in broken)


def test_a_cache_serving_another_answer_than_the_row_is_an_overwrite():
    question = new_question("f", catalogue(Limits(3, 3, 2))[0])
    question = replace(question, question_id="q")
    watch = OutcomeWatch("unused")
    watch.record("q", VALIDATED)
    row = report.account(FaultRun("f", [question], 0, 1.0, []), watch, lambda _m: 1, lambda _q: "Bananas.")
    assert len(row.overwritten) == 1


def test_bounded_scenario_is_a_subset_and_full_kills_the_watchdog_only_when_it_exists():
    _, bounded = choose_faults({}, PROGRAMS)
    _, full = choose_faults({"CHAOS_SCENARIO": "full"}, PROGRAMS)
    _, with_watchdog = choose_faults({"CHAOS_SCENARIO": "full"}, PROGRAMS | {"flink-job-watchdog"})
    assert {f.name for f in bounded} < {f.name for f in full}
    assert "SIGKILL flink-jobmanager" in {f.name for f in bounded}
    assert "SIGKILL flink-job-watchdog" not in {f.name for f in full}
    assert "SIGKILL flink-job-watchdog" in {f.name for f in with_watchdog}
    assert len(full) == 16


def test_chaos_faults_narrows_by_name_and_a_wrong_scenario_is_refused():
    name, faults = choose_faults({"CHAOS_FAULTS": "poison, SIGKILL kafka"}, PROGRAMS)
    assert name == "custom"
    assert [f.name for f in faults] == ["SIGKILL kafka", "poison on every consumed topic"]
    with pytest.raises(ValueError):
        choose_faults({"CHAOS_SCENARIO": "everything"}, PROGRAMS)
