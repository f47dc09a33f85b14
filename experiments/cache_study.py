"""The cache study: a warm-up that makes the working set (the dataset's validated questions), a
measurement of what one cached answer costs in Redis, then one traffic run per matrix cell."""

from __future__ import annotations

import logging
import random
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from common.dataset import Question
from common.messages import question_id_for
from common.topics import Status
from experiments.matrix import Cell, Warmup
from experiments.progress import Ticker
from experiments.redis_control import KeyCounter, RedisControl, TtlEnforcer
from experiments.stats import hit_rate, latency_summary_ms, maxmemory_for, mean_entry_bytes, percentile
from traffic_generator.generator import Outcome, Summary, TrafficGenerator, arrival_offsets, popularity_plan

log = logging.getLogger(__name__)
# Questions that ended without an answer: asking one again starts a new run (LLM calls), so the
# warm-up leaves them alone unless the matrix says `reask = true`.
ENDED_UNANSWERED = {Status.LOW_QUALITY.value, Status.FAILED.value}
# The rate at which the working set is put into the cache once to measure an entry's size.
FILL_RATE_PER_S = 20.0
# Requests sent through storage right before sizing a cell, so its Redis connection is busy as in the cell.
PRIMING_REQUESTS = 5
# A cell whose puts Redis refused (OOM) is run again with this much more room, at most this often.
OOM_SLACK_BYTES = 1024
SIZING_ATTEMPTS = 3
CALIBRATION_ROUNDS = 4


def statuses(database_url: str, question_ids: list[str]) -> dict[str, str]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT question_id, status FROM questions WHERE question_id = ANY(%s)", (question_ids,)
        ).fetchall()
    return {row["question_id"]: row["status"] for row in rows}


@dataclass
class WarmupResult:
    question_ids: list[str]  # the dataset's, in its order
    asked: int
    summary: Summary
    final: dict[str, str]  # status per question after the wait
    working_set: list[Question]  # validated, in dataset order (Zipf rank 1 first)
    elapsed_s: float


def warm_up(questions: list[Question], gen: TrafficGenerator, database_url: str, warmup: Warmup) -> WarmupResult:
    """Ask the dataset's questions once and wait (bounded) for their outcomes."""
    started = time.monotonic()
    ids = [question_id_for(q.question_text) for q in questions]
    before = statuses(database_url, ids)
    to_ask = [
        q for q, qid in zip(questions, ids, strict=True) if warmup.reask or before.get(qid) not in ENDED_UNANSWERED
    ]
    offsets = [i / warmup.rate_per_s for i in range(len(to_ask))]
    print(f"[experiment] warm-up: asking {len(to_ask)} of {len(questions)} questions", flush=True)
    summary = gen.run(to_ask, offsets, progress=Ticker("warm-up sent", len(to_ask)))
    waiting = len(summary.answered_question_ids())
    print(f"[experiment] warm-up: waiting up to {warmup.timeout_s:.0f} s for {waiting} outcomes", flush=True)
    gen.wait_for_outcomes(summary, warmup.timeout_s, progress=Ticker("warm-up terminal", waiting))
    final = statuses(database_url, ids)
    working_set = [q for q, qid in zip(questions, ids, strict=True) if final.get(qid) == Status.VALIDATED]
    print(f"[experiment] warm-up: {len(working_set)} validated (the working set)", flush=True)
    return WarmupResult(ids, len(to_ask), summary, final, working_set, time.monotonic() - started)


@dataclass
class EntrySize:
    """What one cached answer costs in Redis, measured on the working set."""

    bytes: float  # used for sizing: used_memory growth / answers (falls back to MEMORY USAGE)
    from_used_memory: float | None
    from_memory_usage: float | None
    baseline_bytes: int
    answers: int


def measure_entry_size(
    control: RedisControl, gen: TrafficGenerator, working_set: list[Question], other_keys: int
) -> EntrySize:
    """Empty the answer cache, ask each validated question once (a database hit: storage caches it),
    and divide used_memory's growth by the answers cached. Read right after requests (storage's
    connection busy, as during a cell), before and after."""
    control.unlimited()
    gen.run(working_set[:PRIMING_REQUESTS], [0.0] * min(PRIMING_REQUESTS, len(working_set)))
    control.flush_answers()
    baseline = control.memory_without_answers(0.0, other_keys)  # no answer is cached now
    gen.run(working_set, [i / FILL_RATE_PER_S for i in range(len(working_set))])
    keys = control.answer_keys()
    used_after, _ = control.memory_and_keys()
    grown = mean_entry_bytes(baseline, used_after, len(keys))
    usage = control.memory_usage_mean(keys)
    control.flush_answers()
    chosen = grown if grown is not None else usage
    if chosen is None:
        raise RuntimeError("no answer was cached: is Redis reachable from storage_service?")
    return EntrySize(chosen, grown, usage, baseline, len(keys))


@dataclass
class CellResult:
    cell: Cell
    row: dict[str, Any]
    outcomes: list[Outcome] = field(default_factory=list)
    summary: Summary | None = None


def ttl_context(control: RedisControl, ttl_s: int | None) -> AbstractContextManager[TtlEnforcer | None]:
    return TtlEnforcer(control, ttl_s) if ttl_s is not None else nullcontext()


def calibrate(
    control: RedisControl,
    gen: TrafficGenerator,
    working_set: list[Question],
    policy: str,
    maxmemory: int,
    answers: int,
    entry_bytes: float,
) -> tuple[int, list[int]]:
    """Adjust maxmemory until Redis holds `answers` answers, in the very state of the cell: fill the
    cache through storage with distinct questions, count what Redis kept (SCAN runs after the
    eviction the last put caused), and move maxmemory by the missing or extra answers. Returns the
    maxmemory and the counts seen. A cache as large as the working set needs no calibration."""
    held: list[int] = []
    if answers >= len(working_set):
        control.set_cache(policy, maxmemory)
        return maxmemory, held
    for _ in range(CALIBRATION_ROUNDS):
        control.flush_answers()
        control.set_cache(policy, maxmemory)
        gen.run(working_set, [0.0] * len(working_set))
        held.append(len(control.answer_keys()))
        if held[-1] == answers:
            break
        maxmemory += round((answers - held[-1]) * entry_bytes)
        control.set_cache(policy, maxmemory)
    return maxmemory, held


def run_cell(
    cell: Cell,
    control: RedisControl,
    gen: TrafficGenerator,
    working_set: list[Question],
    entry: EntrySize,
    other_keys: int,
) -> CellResult:
    """One cell: size the cache, send the cell's requests, read Redis' counters around them.

    Redis evicts on memory, and used_memory also counts its clients' buffers (16 KB of query buffer
    per connection that talked in the last 2 s): at this cache's scale (KBs) a connection waking up
    would evict the whole cache. So the cache is sized with every connection in the state it has
    during the cell: a short priming run through storage (its connection busy), then the memory
    without the answers, then a calibration that fills the cache until Redis holds N answers
    (calibrate), then the cell's requests one at a time (`workers`, default 1) while the study's own
    connections stay busy (KeyCounter, TtlEnforcer) and KeyCounter keeps Redis at N answers. If
    Redis still refused a put (over maxmemory with no answer left to evict: the client buffers grew
    past the estimate), the cell is run again from a cold cache with 1 KB more room."""
    answers = cell.cache_size.answers_for(len(working_set))
    rng = random.Random(cell.traffic_seed)
    plan = popularity_plan(working_set, cell.requests, cell.popularity.kind, cell.popularity.zipf_s, rng)
    offsets = arrival_offsets(cell.requests, cell.rate_per_s, cell.arrival, rng, burst_size=cell.burst_size)
    slack, attempts = 0.0, 0
    while True:
        attempts += 1
        control.unlimited()
        control.client.config_set("maxmemory-policy", cell.policy)
        with KeyCounter(control) as resident, ttl_context(control, cell.ttl_s) as enforcer:
            gen.run(working_set[:PRIMING_REQUESTS], [0.0] * min(PRIMING_REQUESTS, len(working_set)))
            baseline = control.memory_without_answers(entry.bytes, other_keys)
            maxmemory, held = calibrate(
                control,
                gen,
                working_set,
                cell.policy,
                maxmemory_for(baseline, entry.bytes, answers) + int(slack),
                answers,
                entry.bytes,
            )
            control.flush_answers()  # every cell starts cold
            before = control.counters()
            if answers < len(working_set):
                resident.hold(answers, maxmemory, entry.bytes)
            else:
                resident.samples.clear()
            summary = gen.run(plan, offsets)
            maxmemory = resident.maxmemory or maxmemory  # where the steering left it
            resident.release()
            delta = control.counters().minus(before)
        if delta.oom_rejections == 0 or attempts == SIZING_ATTEMPTS:
            break
        log.warning("%s: %d puts refused (OOM); sizing again", cell.cell_id, delta.oom_rejections)
        slack += max(entry.bytes, OOM_SLACK_BYTES)
    row = cell_row(cell, summary, answers, len(working_set))
    row.update(
        redis_hits=delta.keyspace_hits,
        redis_misses=delta.keyspace_misses,
        redis_hit_rate=hit_rate(delta.keyspace_hits, delta.keyspace_misses),
        evicted_keys=delta.evicted_keys,
        expired_keys=delta.expired_keys,
        oom_rejections=delta.oom_rejections,
        sizing_attempts=attempts,
        calibration_held=";".join(str(h) for h in held),
        maxmemory_adjustments=resident.adjustments,
        resident_mean=sum(resident.samples) / len(resident.samples) if resident.samples else None,
        resident_max=max(resident.samples, default=None),
        baseline_bytes=baseline,
        entry_bytes=round(entry.bytes, 1),
        maxmemory_bytes=maxmemory,
        ttl_expires_applied=enforcer.applied if enforcer is not None else None,
        ttl_expire_touches=enforcer.touches if enforcer is not None else None,
    )
    return CellResult(cell, row, summary.outcomes, summary)


def cell_row(cell: Cell, summary: Summary, answers: int, working_set: int) -> dict[str, Any]:
    """The cell's line of cells.csv from the requests' own outcomes (the Redis columns are added after)."""
    by_source = summary.by_source
    hits, misses = by_source["cache"], by_source["database"]
    answered = [o.latency_s * 1000 for o in summary.outcomes if o.status is not None]
    hit_ms = [o.latency_s * 1000 for o in summary.outcomes if o.source == "cache"]
    miss_ms = [o.latency_s * 1000 for o in summary.outcomes if o.source == "database"]
    latency = latency_summary_ms(answered)
    return {
        "cell": cell.cell_id,
        "study": cell.study,
        "popularity": cell.popularity.label,
        "zipf_s": cell.popularity.zipf_s if cell.popularity.kind == "zipf" else None,
        "arrival": cell.arrival,
        "policy": cell.policy,
        "cache_size": cell.cache_size.label,
        "cache_answers": answers,
        "working_set": working_set,
        "ttl_s": cell.ttl_s if cell.ttl_s is not None else "default",
        "requests": len(summary.outcomes),
        "hits": hits,
        "misses": misses,
        "pending": by_source["pending"],
        "errors": by_source["error"],
        "rejected": by_source["rejected"],
        "hit_rate": hit_rate(hits, misses),
        "p50_ms": latency["p50"],
        "p95_ms": latency["p95"],
        "p99_ms": latency["p99"],
        "hit_p50_ms": percentile(hit_ms, 50),
        "miss_p50_ms": percentile(miss_ms, 50),
        "elapsed_s": round(summary.elapsed_s, 3),
        "throughput_rps": len(answered) / summary.elapsed_s if summary.elapsed_s else None,
    }
