"""The experiments' pure parts: matrix parsing and expansion, cache sizing, and the numbers of the
report (hit rates, percentiles, waits per topic, regeneration, threshold sweep) on hand-made data."""

from datetime import UTC, datetime

import pytest

from common import topics
from experiments.matrix import MATRICES, CacheSize, MatrixError, Popularity, fast, load_matrix, parse_matrix
from experiments.pipeline_study import Recorded, analyse
from experiments.stats import (
    Event,
    RedisCounters,
    hit_rate,
    maxmemory_correction,
    maxmemory_for,
    mean_entry_bytes,
    percentile,
    policy_comparison,
    regeneration_pairs,
    threshold_sweep,
    thresholds,
    topic_waits,
    validated_if,
    written_at,
)

STUDY = {
    "name": "s",
    "popularity": ["uniform", "zipf:1.2"],
    "arrivals": ["poisson", "burst"],
    "policies": ["allkeys-lru", "allkeys-lfu"],
    "cache_sizes": [3, "50%"],
    "ttls_s": [2, "default"],
}


def test_a_study_expands_to_the_cross_product_of_its_lists():
    matrix = parse_matrix({"seed": 5, "traffic": {"requests": 50, "rate_per_s": 10}, "study": [STUDY]})
    assert len(matrix.cells) == 2 * 2 * 2 * 2 * 2
    first = matrix.cells[0]
    assert (first.popularity, first.arrival, first.policy, first.cache_size, first.ttl_s) == (
        Popularity("uniform"),
        "poisson",
        "allkeys-lru",
        CacheSize(answers=3),
        2,
    )
    assert first.requests == 50 and first.rate_per_s == 10 and first.seed == 5
    assert {c.ttl_s for c in matrix.cells} == {2, None}
    assert {c.popularity.zipf_s for c in matrix.cells} == {0.0, 1.2}
    assert len({c.cell_id for c in matrix.cells}) == len(matrix.cells)


def test_policies_of_one_traffic_shape_share_the_request_sequence():
    cells = parse_matrix({"study": [STUDY]}).cells
    lru = next(c for c in cells if c.policy == "allkeys-lru" and c.arrival == "burst")
    lfu = next(
        c
        for c in cells
        if c.policy == "allkeys-lfu"
        and (c.popularity, c.arrival, c.cache_size, c.ttl_s) == (lru.popularity, lru.arrival, lru.cache_size, lru.ttl_s)
    )
    other_shape = next(c for c in cells if c.arrival == "poisson" and c.popularity == lru.popularity)
    assert lru.traffic_seed == lfu.traffic_seed
    assert lru.traffic_seed != other_shape.traffic_seed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"policies": ["noeviction"]}, "policy"),
        ({"popularity": ["zipf"]}, "zipf:S"),
        ({"popularity": ["zipf:-1"]}, "negative"),
        ({"arrivals": ["sometimes"]}, "arrival"),
        ({"cache_sizes": [0]}, "at least 1"),
        ({"cache_sizes": ["150%"]}, "at most 100%"),
        ({"ttls_s": [0]}, "ttl"),
        ({"policies": []}, "non-empty"),
        ({"requests": -3}, "positive"),
    ],
)
def test_a_bad_matrix_says_what_is_wrong(change, message):
    with pytest.raises(MatrixError, match=message):
        parse_matrix({"study": [{**STUDY, **change}]})


def test_two_studies_with_the_same_cells_are_refused():
    with pytest.raises(MatrixError, match="repeat"):
        parse_matrix({"study": [STUDY, STUDY]})


def test_cache_sizes_in_answers_or_as_a_share_of_the_working_set():
    assert CacheSize.parse(4).answers_for(30) == 4
    assert CacheSize.parse("20%").answers_for(30) == 6
    assert CacheSize.parse("20%").answers_for(15) == 3
    assert CacheSize.parse("1%").answers_for(15) == 1  # never an empty cache


def test_the_shipped_matrices_load_and_fast_only_shrinks_them():
    quick = load_matrix(MATRICES / "quick.toml")
    full = load_matrix(MATRICES / "full.toml")
    assert len(full.cells) > len(quick.cells)
    policies = {c.policy for c in quick.cells}
    assert {"allkeys-lru", "allkeys-lfu"} < policies and len(policies) >= 3
    assert {c.arrival for c in quick.cells} >= {"poisson", "burst"}
    assert any(c.ttl_s is not None for c in quick.cells)
    # the quick matrix's traffic must fit its budget: under 4 minutes of requests
    assert sum(c.requests / c.rate_per_s for c in quick.cells) < 240
    small = fast(quick)
    assert [c.cell_id for c in small.cells] == [c.cell_id for c in quick.cells]
    assert max(c.requests for c in small.cells) < max(c.requests for c in quick.cells)
    assert small.warmup.timeout_s <= quick.warmup.timeout_s


def test_maxmemory_is_the_baseline_plus_the_answers_measured_cost():
    assert maxmemory_for(1_000_000, 1500.4, 4) == 1_006_002
    assert mean_entry_bytes(1_000_000, 1_015_000, 10) == 1500
    assert mean_entry_bytes(1_000_000, 990_000, 10) is None  # memory shrank: cannot tell
    assert mean_entry_bytes(1_000_000, 1_015_000, 0) is None
    with pytest.raises(ValueError):
        maxmemory_for(1_000_000, 1500, 0)


def test_maxmemory_follows_the_answers_held_during_a_cell():
    assert maxmemory_correction(held=5, target=3, entry_bytes=500, evicting=True) == -1000
    assert maxmemory_correction(held=5, target=3, entry_bytes=500, evicting=False) == -1000
    assert maxmemory_correction(held=1, target=3, entry_bytes=500, evicting=True) == 1000
    assert maxmemory_correction(held=1, target=3, entry_bytes=500, evicting=False) == 0  # still filling
    assert maxmemory_correction(held=3, target=3, entry_bytes=500, evicting=True) == 0


def test_percentiles_interpolate_between_ranks():
    values = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(values, 50) == 30
    assert percentile(values, 95) == pytest.approx(48)
    assert percentile([5.0, 1.0], 50) == 3
    assert percentile([], 50) is None


def test_hit_rate_and_counter_deltas():
    assert hit_rate(3, 1) == 0.75
    assert hit_rate(0, 0) is None
    delta = RedisCounters(110, 50, 9, 4).minus(RedisCounters(100, 45, 2, 4))
    assert delta == RedisCounters(10, 5, 7, 0)


def test_waits_run_from_each_message_to_the_next_stage_and_skip_the_audit_copy():
    events = [
        Event(topics.QUESTIONS_PENDING, "q", 1, 100.0),
        Event(topics.LLM_REQUESTS, "q", 1, 103.0),  # written with the result: not a stage
        Event(topics.ERRORS_OVERLOAD, "q", 1, 103.0),
        Event(topics.QUESTIONS_PENDING, "q", 1, 108.0),
        Event(topics.LLM_RESPONSES_SUCCESS, "q", 1, 110.0),
        Event(topics.VALIDATED_RESPONSES, "q", 1, 110.5),
        Event(topics.QUESTIONS_PENDING, "other", 1, 50.0),  # still pending: no next stage yet
    ]
    waits = topic_waits(events, applied_at_s={"q": 111.0})
    assert waits[topics.QUESTIONS_PENDING] == [3.0, 2.0]
    assert waits[topics.ERRORS_OVERLOAD] == [5.0]
    assert waits[topics.LLM_RESPONSES_SUCCESS] == [0.5]
    assert waits[topics.VALIDATED_RESPONSES] == [0.5]
    assert topics.LLM_REQUESTS not in waits


def test_messages_written_at_the_same_instant_keep_the_pipelines_order():
    # Flink's outputs carry their input's Kafka timestamp; listed out of order on purpose
    events = [
        Event(topics.VALIDATED_RESPONSES, "q", 1, 20.0, attempt=2),
        Event(topics.QUESTIONS_PENDING, "q", 1, 10.0, attempt=2),  # the regeneration
        Event(topics.LLM_RESPONSES_SUCCESS, "q", 1, 20.0, attempt=2),
        Event(topics.LLM_RESPONSES_SUCCESS, "q", 1, 10.0, attempt=1),
        Event(topics.QUESTIONS_PENDING, "q", 1, 4.0, attempt=1),
    ]
    waits = topic_waits(events, applied_at_s={"q": 21.0})
    assert waits[topics.QUESTIONS_PENDING] == [6.0, 10.0]
    assert waits[topics.LLM_RESPONSES_SUCCESS] == [0.0, 0.0]
    assert waits[topics.VALIDATED_RESPONSES] == [1.0]


def test_a_message_is_dated_by_the_later_of_kafkas_timestamp_and_its_own():
    assert written_at(100.0, 103.5) == 103.5  # a Flink output: Kafka kept the input's timestamp
    assert written_at(100.0, 99.0) == 100.0
    assert written_at(100.0, None) == 100.0


def test_regeneration_pairs_first_and_best_attempt():
    pairs = regeneration_pairs({"a": [(2, 0.8), (1, 0.4)], "b": [(1, 0.9)], "c": [(1, 0.5), (2, 0.3), (3, 0.6)]})
    assert pairs == [("a", 0.4, 0.8), ("c", 0.5, 0.6)]


def test_thresholds_hit_the_settings_values_exactly():
    levels = thresholds()
    assert levels[0] == 0.6 and levels[-1] == 0.9 and len(levels) == 7
    assert 0.75 in levels and 0.85 in levels


def test_threshold_sweep_replays_the_pipelines_rule():
    assert validated_if([0.5, 0.7, 0.8], 0.75, 3)
    assert not validated_if([0.5, 0.7, 0.7], 0.75, 3)
    assert not validated_if([0.5, 0.5, 0.5, 0.9], 0.75, 3)  # a 4th attempt never happens
    scores = {
        "validated first": [0.8],
        "validated third": [0.5, 0.6, 0.78],
        "low quality": [0.62, 0.7, 0.66],
        "failed unscored": [],
    }
    sweep = {t: (share, exact) for t, share, exact in threshold_sweep(scores, 4, thresholds(), 3, 0.75)}
    assert sweep[0.6] == (0.75, True)
    assert sweep[0.75] == (0.5, True)  # the threshold the run used: its own validated share
    # 0.8: "validated first" stopped at 0.8 >= 0.8 and stays; "validated third" scored 0.78 on its
    # last attempt: not validated, and exact (it used every attempt)
    assert sweep[0.8] == (0.25, True)
    # 0.85: "validated first" stopped after one attempt below 0.85; more attempts were never made
    assert sweep[0.85] == (0.0, False)


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_pipeline_analysis_on_a_recorded_run():
    questions = {
        "ok": {"question_id": "ok", "status": "validated", "runs": 1, "created_at": _ts(99), "completed_at": _ts(110)},
        "regen": {
            "question_id": "regen",
            "status": "validated",
            "runs": 1,
            "created_at": _ts(100),
            "completed_at": _ts(130),
        },
        "low": {
            "question_id": "low",
            "status": "low_quality",
            "runs": 2,
            "created_at": _ts(0),
            "completed_at": _ts(160),
        },
        "wait": {"question_id": "wait", "status": "pending", "runs": 1, "created_at": _ts(100), "completed_at": None},
    }
    recorded = Recorded(
        questions=questions,
        scores={"ok": [(1, 0.9)], "regen": [(1, 0.4), (2, 0.8)], "low": [(1, 0.1), (2, 0.2), (3, 0.3)]},
        calls={
            "ok": [(1, 0), (1, 1)],  # an overload retry, then validated: recovered
            "regen": [(1, 0), (2, 0)],
            "low": [(1, 0), (2, 0), (3, 0)],
        },
        events=[
            Event(topics.QUESTIONS_PENDING, "ok", 1, 100.0),
            Event(topics.QUESTIONS_PENDING, "low", 2, 120.0),  # a second run: timed from its own start
        ],
    )
    result = analyse(recorded, quality_threshold=0.75, max_attempts=3)
    summary = result.summary
    assert summary["terminal"] == 3
    assert summary["statuses"]["validated"] == 2
    assert summary["validated_share"] == pytest.approx(2 / 3)
    assert summary["recovered_by_retries"] == 1
    assert summary["retried"] == 1
    assert summary["regenerated"] == 2 and summary["regenerated_validated"] == 1
    assert summary["llm_calls"] == 7
    assert summary["extra_llm_calls_per_question"] == pytest.approx((1 + 1 + 2) / 3)
    assert summary["regeneration_calls"] == 3 and summary["retry_calls"] == 1
    by_id = {r["question_id"]: r for r in result.rows}
    assert by_id["ok"]["post_to_terminal_s"] == 10.0
    assert by_id["regen"]["post_to_terminal_s"] == 30.0  # no Kafka message: from created_at (first run)
    assert by_id["low"]["post_to_terminal_s"] == 40.0
    assert by_id["wait"]["post_to_terminal_s"] is None
    sweep = {t: s for t, s, _ in result.sweep}
    assert sweep[0.75] == pytest.approx(summary["validated_share"])


def test_lfu_and_lru_are_compared_cell_by_cell():
    base = {"study": "s", "popularity": "zipf s=1.1", "arrival": "poisson", "cache_size": "20%", "ttl_s": "default"}
    cells = [
        {**base, "policy": "allkeys-lru", "hit_rate": 0.40},
        {**base, "policy": "allkeys-lfu", "hit_rate": 0.55},
        {**base, "policy": "allkeys-random", "hit_rate": 0.35},
        {**base, "cache_size": "40%", "policy": "allkeys-lru", "hit_rate": 0.6},  # no LFU twin
    ]
    [row] = policy_comparison(cells)
    assert row["difference_pp"] == pytest.approx(15)


def test_the_report_renders_every_figure_from_cells_and_a_pipeline(tmp_path):
    from experiments import report

    cells = []
    for popularity in ("uniform", "zipf s=1.1"):
        for policy, rate in (("allkeys-lru", 0.4), ("allkeys-lfu", 0.5)):
            for size, answers in (("20%", 3), ("40%", 6)):
                for ttl in ("default", 2):
                    cells.append(
                        {
                            "cell": f"{popularity}-{policy}-{size}-{ttl}",
                            "study": "s",
                            "popularity": popularity,
                            "arrival": "poisson",
                            "policy": policy,
                            "cache_size": size,
                            "cache_answers": answers,
                            "working_set": 15,
                            "ttl_s": ttl,
                            "hit_rate": rate,
                            "redis_hit_rate": rate,
                            "hits": 4,
                            "misses": 6,
                            "evicted_keys": 3,
                            "expired_keys": 0,
                            "resident_mean": 2.5,
                            "resident_max": 3,
                            "p50_ms": 5.0,
                            "p95_ms": 9.0,
                            "p99_ms": 12.0,
                            "throughput_rps": 39.0,
                        }
                    )
    recorded = Recorded(
        questions={
            "a": {"question_id": "a", "status": "validated", "runs": 1, "created_at": _ts(0), "completed_at": _ts(9)},
        },
        scores={"a": [(1, 0.5), (2, 0.9)]},
        calls={"a": [(1, 0), (2, 0)]},
        events=[Event(topics.QUESTIONS_PENDING, "a", 1, 1.0), Event(topics.LLM_RESPONSES_SUCCESS, "a", 1, 4.0)],
    )
    info = report.RunInfo(
        folder=tmp_path,
        matrix_name="unit",
        stack="none",
        started_utc="now",
        runtime_s=60,
        cells=cells,
        comparison=policy_comparison(cells),
        latencies_ms={"cache hit (200)": [1.0, 2.0], "database hit (200)": [5.0, 9.0]},
        pipeline=analyse(recorded, 0.75, 3),
        warmup={"questions": 1, "asked": 1, "validated": 1, "elapsed_s": 9.0, "pending_p50_ms": 3.0},
        entry={"bytes": 1500.0, "from_used_memory": 1500.0, "from_memory_usage": 1200.0, "answers": 15},
        redis_before={},
        other_keys=0,
    )
    doc = report.compose(info)
    markdown = doc.markdown()
    figures = {
        "hit_rate_by_policy.png",
        "hit_rate_vs_ttl.png",
        "latency_cdf.png",
        "threshold_sweep.png",
        "f1_regeneration.png",
        "topic_waits.png",
    }
    for name in figures:
        assert (tmp_path / name).stat().st_size > 1000
        assert f"]({name})" in markdown
    page = doc.html(tmp_path, "t")
    assert page.count("data:image/png;base64,") == len(figures)
    assert "| 0.750 |" in markdown  # the sweep's row at the stack's threshold
