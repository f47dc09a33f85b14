"""The benchmark's oneslot part (benchmarks/e2e.py): its pure decisions — the 503 rate, whether the
target holds, when the consumer group has settled on the processes measured — and the readers it
uses to run the stack's LLM consumer programs itself (supervisord's configuration, the consumers' logs)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from benchmarks.e2e import (
    answered_call_latencies_ms,
    group_settled,
    judge_one_slot,
    lines_after,
    oneslot_rows,
    program_environment,
    program_section,
    refused_rate,
    time_to_validated_p50,
)
from scripts.platform.layout import Layout
from scripts.platform.processes import program


def half(refused_rate: float, p50_ms: int | None, validated_per_s: float = 2.0) -> dict:
    return {"refused_rate": refused_rate, "p50_ms": p50_ms, "validated_per_s": validated_per_s}


def test_refused_rate_is_refused_over_every_call_the_llm_saw():
    assert refused_rate(refused=3, answered=1) == 0.75
    assert refused_rate(refused=0, answered=40) == 0.0
    assert refused_rate(refused=0, answered=0) == 0.0  # nothing asked: no 503s, not a division by zero


def test_the_target_holds_when_the_adaptive_half_is_no_worse():
    verdict = judge_one_slot(half(0.40, 9000, 3.0), half(0.50, 10000, 2.0))
    assert verdict["holds"] and verdict["refused_rate_no_worse"] and verdict["p50_no_worse"]
    assert verdict["refused_rate_ratio"] == 0.8
    assert verdict["p50_ratio"] == 0.9
    assert verdict["validated_per_s_ratio"] == 1.5


def test_a_p50_worse_beyond_the_slack_misses_the_target():
    within = judge_one_slot(half(0.5, 10900), half(0.5, 10000), p50_slack=0.10)
    beyond = judge_one_slot(half(0.5, 11100), half(0.5, 10000), p50_slack=0.10)
    assert within["p50_no_worse"] and within["holds"]
    assert not beyond["p50_no_worse"] and not beyond["holds"]
    assert beyond["refused_rate_no_worse"]


def test_a_higher_503_rate_beyond_the_slack_misses_the_target():
    verdict = judge_one_slot(half(0.60, 9000), half(0.50, 10000), refused_slack=0.02)
    assert not verdict["refused_rate_no_worse"] and not verdict["holds"]
    assert verdict["p50_no_worse"]


def test_a_few_503s_against_none_are_within_the_absolute_slack():
    verdict = judge_one_slot(half(0.01, 300), half(0.0, 300), refused_slack=0.02)
    assert verdict["refused_rate_no_worse"] and verdict["holds"]
    assert verdict["refused_rate_ratio"] is None  # no ratio to a zero rate


def test_a_half_where_no_question_ended_cannot_show_the_target_holds():
    assert not judge_one_slot(half(0.0, None), half(0.5, 10000))["holds"]
    assert not judge_one_slot(half(0.0, 9000), half(0.5, None))["holds"]


def test_the_group_is_settled_only_when_stable_with_exactly_the_processes_measured():
    ids = ["llm-consumer-host-101", "llm-consumer-host-102"]
    assert group_settled(True, ids, [102, 101])
    assert not group_settled(False, ids, [101, 102])  # still rebalancing
    assert not group_settled(True, ids[:1], [101, 102])  # one has not joined yet
    assert not group_settled(True, [*ids, "llm-consumer-host-7"], [101, 102])  # a stopped one still in it
    assert not group_settled(True, ["llm-consumer-host-7", "llm-consumer-host-8"], [101, 102])


def test_a_programs_environment_reads_back_as_supervisord_was_given_it(tmp_path: Path):
    layout = Layout("test-stack", {}, state=tmp_path)
    environment = {"DATABASE_URL": "postgresql://u:p%40ss@localhost:5432/db", "METRICS_PORT": 9102, "EMPTY": ""}
    conf = "\n".join(
        [
            "[supervisord]",
            "logfile=/tmp/x.log",
            "",
            program("llm-consumer-0", "/venv/bin/python -m llm_consumer", layout, environment=environment),
            program("llm-consumer-1", "/venv/bin/python -m llm_consumer", layout, environment={"METRICS_PORT": 9103}),
        ]
    )
    section = program_section(conf, "llm-consumer-0")
    # The program's command as supervisord runs it (with whatever it wraps the command in, e.g. `nice`).
    assert shlex.split(section["command"])[-3:] == ["/venv/bin/python", "-m", "llm_consumer"]
    assert section["stdout_logfile"] == str(layout.path("logs", "llm-consumer-0.log"))
    assert program_environment(section) == {key: str(value) for key, value in environment.items()}
    assert program_environment(program_section(conf, "llm-consumer-1")) == {"METRICS_PORT": "9103"}
    assert program_environment({"command": "x"}) == {}


def test_answered_call_latencies_come_from_the_consumers_log_lines_of_the_questions_asked():
    def line(msg: str, question_id: str, **extra: object) -> str:
        return json.dumps({"service": "llm-consumer", "msg": msg, "question_id": question_id, **extra})

    lines = [
        line("LLM answered", "q1", latency_ms=251),
        line("LLM answered", "other", latency_ms=5),  # another part's question
        line("LLM call failed", "q1", kind="overload", status=503),
        'Traceback (most recent call last): "LLM answered"',  # not JSON
        line("LLM answered", "q2", latency_ms=260.5),
    ]
    assert answered_call_latencies_ms(lines, {"q1", "q2"}) == [251.0, 260.5]
    assert answered_call_latencies_ms(lines, set()) == []


def test_lines_after_reads_what_was_written_since_the_mark_or_all_of_a_rotated_file(tmp_path: Path):
    log = tmp_path / "consumer.log"
    log.write_text("before\n")
    mark = log.stat().st_size
    with log.open("a") as out:
        out.write("during 1\nduring 2\n")
    assert lines_after(log, mark) == ["during 1", "during 2"]
    log.write_text("rotated\n")  # shorter than the mark: a new file
    assert lines_after(log, mark + 100) == ["rotated"]
    assert lines_after(tmp_path / "missing.log", 0) == []


@pytest.mark.parametrize(("holds", "shown"), [(True, "target holds"), (False, "target MISSED")])
def test_the_markdown_rows_say_whether_the_target_holds(holds: bool, shown: str):
    def measured(rate: float) -> dict:
        return {
            **half(rate, 9000),
            "llm_calls": 200,
            "p50_ended_ms": 8000,
            "validated": 70,
            "failed": 10,
            "answered_call_p50_ms": 252,
            "llm_max_concurrency": 32,
        }

    adaptive, one = measured(0.40 if holds else 0.70), measured(0.50)
    report = {
        "llm_latency_s": 0.25,
        "questions": 80,
        "one_at_a_time": one,
        "adaptive": adaptive,
        "verdict": judge_one_slot(adaptive, one),
    }
    rows = oneslot_rows(report)
    assert len(rows) == 3
    assert ("40.0%" if holds else "70.0%") + " of 200 calls" in rows[1][1]  # the adaptive half's row
    assert shown in rows[2][2]
    assert oneslot_rows(None) == [] and oneslot_rows({"error": "x"}) == []


def test_time_to_validated_counts_a_failed_question_as_never_answered():
    # 5 asked: the median is the 3rd fastest to be validated.
    assert time_to_validated_p50([("validated", 3.0), ("validated", 1.0), ("validated", 2.0)], 5) == 3.0
    # Failing fast must not look faster: 2 of 5 validated leaves the median question unanswered.
    assert time_to_validated_p50([("failed", 0.5), ("failed", 0.6), ("validated", 1.0), ("validated", 2.0)], 5) is None
    # Fewer failures, same answers: the median question waited for the slower answers.
    slow = time_to_validated_p50([("validated", t) for t in (1.0, 2.0, 8.0, 9.0)] + [("failed", 0.5)], 5)
    assert slow == 8.0
    assert time_to_validated_p50([], 0) is None
