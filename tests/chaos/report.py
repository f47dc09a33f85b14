"""The chaos run's verdict per fault (lost, stuck, wrong status, overwritten, extra LLM calls) and the
table the README shows (written to bench-results/chaos-latest.md, not committed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tests.chaos.observe import TERMINAL, OutcomeWatch
from tests.chaos.scenario import FaultRun

# Redelivery after a crash may repeat the call in hand (at-least-once); more than this is a fork.
MAX_EXTRA_CALLS_PER_QUESTION = 1
MAX_EXTRA_CALLS_PER_FAULT = 2


@dataclass
class Row:
    fault: str
    questions: int
    rejected: int
    recovery_s: float | None
    problems: list[str]
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    overwritten: list[str] = field(default_factory=list)
    extra_calls: dict[str, int] = field(default_factory=dict)  # question -> calls beyond what its chain needs


def account(
    run: FaultRun, watch: OutcomeWatch, calls_of: Callable[[str], int], cached: Callable[[str], str | None]
) -> Row:
    row = Row(run.fault, len(run.questions), run.rejected, run.recovery_s, list(run.problems))
    for q in run.questions:
        label = f"{q.question_id[:12]} ({q.chain.name})"
        latest, first = watch.latest.get(q.question_id), watch.first_terminal.get(q.question_id)
        if latest is None:
            row.lost.append(label)
        elif first is None or latest.status not in TERMINAL:
            row.stuck.append(f"{label}: {latest.status}")
        if first is not None and first.status != q.chain.expected.value:
            row.wrong.append(f"{label}: expected {q.chain.expected.value}, first terminal {first.status}")
        changes = watch.overwrites.get(q.question_id, [])
        if changes:
            row.overwritten.append(f"{label}: {first} then {changes}")
        if first is not None and first.status == "validated":
            served = cached(q.question_id)
            if served is not None and served != first.answer:
                row.overwritten.append(f"{label}: Redis serves {served!r}, the first outcome was {first.answer!r}")
        extra = calls_of(q.marker) - q.chain.calls
        if extra > 0:
            row.extra_calls[label] = extra
    return row


def violations(rows: list[Row]) -> list[str]:
    """Every broken promise, one line each, naming the fault and the questions."""
    found = []
    for row in rows:
        for what, items in (
            ("lost", row.lost),
            ("stuck", row.stuck),
            ("unexpected terminal status", row.wrong),
            ("overwritten", row.overwritten),
            ("problem", row.problems),
        ):
            found += [f"[{row.fault}] {what}: {item}" for item in items]
        found += [
            f"[{row.fault}] {n} LLM calls beyond its chain (at most {MAX_EXTRA_CALLS_PER_QUESTION}): {label}"
            for label, n in row.extra_calls.items()
            if n > MAX_EXTRA_CALLS_PER_QUESTION
        ]
    total = sum(sum(r.extra_calls.values()) for r in rows)
    if total > MAX_EXTRA_CALLS_PER_FAULT * len(rows):
        found.append(f"{total} extra LLM calls in all, more than {MAX_EXTRA_CALLS_PER_FAULT} per fault")
    return found


def table(rows: list[Row]) -> str:
    head = (
        "| fault injected | questions | lost | stuck | wrong status | overwritten | duplicate LLM calls "
        "| recovered in | notes |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        recovered = f"{r.recovery_s:.0f} s" if r.recovery_s is not None else "no"
        notes = "; ".join(r.problems + ([f"{r.rejected} POSTs never accepted"] if r.rejected else []))
        lines.append(
            f"| {r.fault} | {r.questions} | {len(r.lost)} | {len(r.stuck)} | {len(r.wrong)} | {len(r.overwritten)} "
            f"| {sum(r.extra_calls.values())} | {recovered} | {notes} |"
        )
    lines.append(
        f"| **all {len(rows)} faults** | {sum(r.questions for r in rows)} | {sum(len(r.lost) for r in rows)} "
        f"| {sum(len(r.stuck) for r in rows)} | {sum(len(r.wrong) for r in rows)} "
        f"| {sum(len(r.overwritten) for r in rows)} | {sum(sum(r.extra_calls.values()) for r in rows)} | | |"
    )
    return "\n".join(lines)


def document(rows: list[Row], scenario: str, settings: str, broken: list[str], elapsed_s: float) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    verdict = "all promises kept" if not broken else f"{len(broken)} broken promises"
    body = [
        f"# Chaos run ({scenario}), {when}: {verdict}",
        "",
        f"{settings}; {elapsed_s / 60:.1f} min. A question's batch is asked just before its fault; the",
        "questions of earlier faults are still flowing when the next one hits. `duplicate LLM calls`: calls",
        "beyond what each question's scripted chain needs (tests/chaos/chains.py); `recovered in`: from the",
        "heal until the broken part and the pipeline (API, scorer, Flink job with every task) are healthy.",
        "",
        table(rows),
    ]
    if broken:
        body += ["", "## Broken promises", "", *[f"- {line}" for line in broken]]
    return "\n".join(body) + "\n"
