"""Pure computations of the report's numbers (unit-tested on hand-made data): percentiles, hit rates,
waits per topic, regeneration, retries and the threshold sweep."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from common import topics
from common.policy import Route, route_by_score

# A message's next stage: llm-requests is left out, it is llm_consumer's audit copy of the request,
# produced together with the call's result (not a stage the question waits in).
AUDIT_TOPICS = frozenset({topics.LLM_REQUESTS})
# Where a question ends; storage applying it (questions.completed_at) is the next stage.
TERMINAL_TOPICS = frozenset(topics.TERMINAL_STATUS_BY_TOPIC)
RETRY_TOPICS = frozenset({topics.ERRORS_OVERLOAD, topics.ERRORS_QUOTA})
# A question's stages in order, to order two of its messages written at the same instant.
STAGE_RANK = {
    topics.QUESTIONS_PENDING: 0,
    topics.LLM_RESPONSES_SUCCESS: 1,
    topics.LLM_RESPONSES_ERROR: 1,
    topics.ERRORS_OVERLOAD: 1,
    topics.ERRORS_QUOTA: 1,
    topics.VALIDATED_RESPONSES: 2,
    topics.LOW_QUALITY_RESPONSES: 2,
    topics.DEAD_LETTER: 3,
}


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary_ms(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    return {f"p{q}": percentile(latencies_ms, q) for q in (50, 95, 99)}


def hit_rate(hits: int, misses: int) -> float | None:
    """hits / (hits + misses); None when there was no lookup at all."""
    lookups = hits + misses
    return hits / lookups if lookups else None


@dataclass(frozen=True)
class RedisCounters:
    """What INFO reports, read before and after a cell."""

    keyspace_hits: int
    keyspace_misses: int
    evicted_keys: int
    expired_keys: int
    oom_rejections: int = 0  # writes refused: over maxmemory with nothing left to evict (errorstat_OOM)

    def minus(self, before: RedisCounters) -> RedisCounters:
        return RedisCounters(
            self.keyspace_hits - before.keyspace_hits,
            self.keyspace_misses - before.keyspace_misses,
            self.evicted_keys - before.evicted_keys,
            self.expired_keys - before.expired_keys,
            self.oom_rejections - before.oom_rejections,
        )


def maxmemory_for(baseline_bytes: int, entry_bytes: float, answers: int) -> int:
    """Redis' maxmemory for a cache of `answers` answers: its memory with no answer cached (measured)
    plus `answers` times the measured mean cost of one cached answer (value, key, expiry, overhead)."""
    if baseline_bytes <= 0 or entry_bytes <= 0 or answers < 1:
        raise ValueError("baseline, entry size and answers must be positive")
    return baseline_bytes + math.ceil(answers * entry_bytes)


def maxmemory_correction(held: int, target: int, entry_bytes: float, evicting: bool) -> int:
    """Bytes to add to maxmemory so Redis holds `target` answers: client buffers move used_memory by
    a few KB during a cell, that is by a few answers. More answers than the target: lower it by the
    extra ones (Redis then evicts them by its policy). Fewer while Redis is still evicting: raise
    it by the missing ones. Fewer without evictions: the cache is simply not full yet, no change."""
    if held > target:
        return -round((held - target) * entry_bytes)
    if held < target and evicting:
        return round((target - held) * entry_bytes)
    return 0


def mean_entry_bytes(used_before: int, used_after: int, entries: int) -> float | None:
    """The mean memory one cached answer costs: the growth of used_memory over the entries added;
    None when it cannot be told (no entry, or the memory did not grow)."""
    if entries < 1 or used_after <= used_before:
        return None
    return (used_after - used_before) / entries


# ---------------------------------------------------------------------------------------------
# Pipeline


@dataclass(frozen=True)
class Event:
    """One message of a question's run on a topic, written at `at_s` (seconds since the epoch)."""

    topic: str
    question_id: str
    run: int
    at_s: float
    attempt: int | None = None
    retry_count: int | None = None


def written_at(kafka_s: float, updated_s: float | None) -> float:
    """When a message was written: the later of its Kafka timestamp and its own `updated_at` (set by
    the stage that built it, common.messages.PipelineMessage.evolve). Flink's Kafka sink stamps an
    output with its input record's timestamp, so for the Flink job's outputs (validated, low quality,
    regeneration) only `updated_at` is the time they were written."""
    return max(kafka_s, updated_s) if updated_s is not None else kafka_s


def topic_waits(events: Iterable[Event], applied_at_s: dict[str, float]) -> dict[str, list[float]]:
    """Seconds each message waited in its topic until the question's next stage: the next message of
    the same question and run (on any stage topic), or, for a terminal topic, storage applying the
    outcome (`applied_at_s`: questions.completed_at). The wait includes the consumer's own work
    (e.g. the LLM call for questions-pending, the scoring for llm-responses-success)."""
    by_question: dict[tuple[str, int], list[Event]] = defaultdict(list)
    for event in events:
        if event.topic not in AUDIT_TOPICS:
            by_question[(event.question_id, event.run)].append(event)
    waits: dict[str, list[float]] = defaultdict(list)
    for (question_id, _run), chain in by_question.items():
        chain.sort(key=lambda e: (e.at_s, e.attempt or 0, e.retry_count or 0, STAGE_RANK.get(e.topic, 1)))
        for event, following in zip(chain, [*chain[1:], None], strict=True):
            if following is not None:
                waits[event.topic].append(following.at_s - event.at_s)
            elif event.topic in TERMINAL_TOPICS and question_id in applied_at_s:
                waits[event.topic].append(max(0.0, applied_at_s[question_id] - event.at_s))
    return dict(waits)


def regeneration_pairs(scores: dict[str, list[tuple[int, float]]]) -> list[tuple[str, float, float]]:
    """(question_id, first attempt's F1, best F1) for every question answered more than once."""
    pairs = []
    for question_id, attempts in sorted(scores.items()):
        if len(attempts) > 1:
            ordered = sorted(attempts)
            pairs.append((question_id, ordered[0][1], max(f1 for _, f1 in ordered)))
    return pairs


def thresholds(start: float = 0.60, stop: float = 0.90, step: float = 0.05) -> list[float]:
    """start, start + step, ..., stop (rounded: 0.75 is exactly the 0.75 a setting holds)."""
    count = round((stop - start) / step)
    return [round(start + i * step, 10) for i in range(count + 1)]


def validated_if(scores: Sequence[float], threshold: float, max_attempts: int) -> bool:
    """Whether a question whose attempts scored `scores` (in order) would have been validated at
    `threshold`: the pipeline's own rule (common.policy.route_by_score) replayed over the attempts."""
    for attempt, f1 in enumerate(scores, start=1):
        route = route_by_score(f1, attempt, threshold, max_attempts)
        if route is Route.VALIDATED:
            return True
        if route is Route.LOW_QUALITY:
            return False
    return False


def threshold_sweep(
    scores: dict[str, list[float]], questions: int, levels: Sequence[float], max_attempts: int, used_threshold: float
) -> list[tuple[float, float, bool]]:
    """(threshold, validated share, exact) for each level. `scores`: each question's attempt F1s in
    order; `questions`: how many questions count (those without a score count as not validated).

    Exact at or below `used_threshold`, the one the run had: its attempts went on until one passed it.
    Above it, a question validated before its last attempt with a score between the two thresholds
    would have been given more attempts than were recorded: the share is then a lower bound
    (`exact` False)."""
    results = []
    for level in levels:
        passed = sum(validated_if(s, level, max_attempts) for s in scores.values())
        stopped_early = level > used_threshold and any(
            len(s) < max_attempts and used_threshold <= max(s) < level for s in scores.values() if s
        )
        results.append((level, passed / questions if questions else 0.0, not stopped_early))
    return results


def summary_of(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "mean": sum(values) / len(values) if values else None,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
    }


def policy_comparison(
    cells: Sequence[dict], first: str = "allkeys-lfu", second: str = "allkeys-lru"
) -> list[dict[str, object]]:
    """Hit rates of two policies side by side on the same traffic (popularity, arrivals, cache size,
    TTL), and the difference first - second in percentage points."""
    keyed: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for row in cells:
        key = (row["study"], row["popularity"], row["arrival"], row["cache_size"], row["ttl_s"])
        keyed[key][row["policy"]] = row
    rows = []
    for (study, popularity, arrival, size, ttl), by_policy in keyed.items():
        if first in by_policy and second in by_policy:
            a, b = by_policy[first]["hit_rate"], by_policy[second]["hit_rate"]
            rows.append(
                {
                    "study": study,
                    "popularity": popularity,
                    "arrival": arrival,
                    "cache_size": size,
                    "ttl_s": ttl,
                    first: a,
                    second: b,
                    f"{first} held": by_policy[first].get("resident_mean"),
                    f"{second} held": by_policy[second].get("resident_mean"),
                    "difference_pp": (a - b) * 100 if a is not None and b is not None else None,
                }
            )
    return rows
