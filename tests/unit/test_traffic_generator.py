import csv
import itertools
import random
import statistics
import tracemalloc
from collections import Counter

import pytest

from common.dataset import SAMPLE_CSV, Question, first_questions, iter_questions, read_questions, sample_questions
from traffic_generator.__main__ import build_plan, configuration, parse_args
from traffic_generator.generator import (
    Outcome,
    Summary,
    arrival_offsets,
    burst_offsets,
    choose_requests,
    popularity_plan,
    source_of,
    zipf_weights,
)


def test_sample_csv_reads_in_the_yahoo_layout():
    questions = read_questions(SAMPLE_CSV)
    assert len(questions) >= 30
    first = questions[0]
    assert first.question_text == "What is the capital of Chile?"
    assert first.original_answer == "The capital of Chile is Santiago."
    with_content = next(q for q in questions if q.question_text.startswith("Why is the sky blue?"))
    assert "another color" in with_content.question_text  # content joins the title


def test_rows_without_answer_or_columns_are_skipped(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('"1","Only title","",""\n"1","short row"\n"2","Q?","","A."\n')
    [q] = read_questions(path)
    assert (q.question_text, q.original_answer) == ("Q?", "A.")
    path.write_text('"1","x"\n')
    with pytest.raises(ValueError):
        read_questions(path)


def test_constant_arrivals_are_evenly_spaced():
    assert arrival_offsets(4, 2.0, "constant", random.Random(0)) == [0.0, 0.5, 1.0, 1.5]


def test_poisson_arrivals_have_the_requested_mean_rate():
    offsets = arrival_offsets(5000, 10.0, "poisson", random.Random(1))
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert statistics.mean(gaps) == pytest.approx(0.1, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(0.1, rel=0.1)  # exponential: sd == mean


def test_unknown_distribution_and_bad_rate():
    with pytest.raises(ValueError):
        arrival_offsets(3, 1.0, "zipf", random.Random(0))
    with pytest.raises(ValueError):
        arrival_offsets(3, 0, "constant", random.Random(0))


def test_repeats_reuse_questions_already_sent():
    questions = [Question("1", f"q{i}?", "a") for i in range(1000)]
    plan = choose_requests(questions, 200, 0.3, random.Random(2))
    repeats = sum(1 for i, q in enumerate(plan) if q in plan[:i])
    assert 40 <= repeats <= 80
    assert choose_requests(questions, 10, 0.0, random.Random(2)) == questions[:10]


def test_summary_counts_and_percentiles():
    summary = Summary(
        outcomes=[
            Outcome(202, "pending", 0.010),
            Outcome(200, "found (cache)", 0.002),
            Outcome(None, "error: ConnectionError", 0.0),
        ],
        elapsed_s=2.0,
    )
    assert summary.counts == {"pending": 1, "found (cache)": 1, "error: ConnectionError": 1}
    assert summary.latency_percentiles_ms()["max"] == pytest.approx(10.0)
    assert "1.50 req/s" in summary.render()


# --- issue 11: popularity apart from arrivals, the per-request CSV, large files -------------------


def questions_named(n: int) -> list[Question]:
    return [Question("1", f"question {i}?", f"answer {i}") for i in range(n)]


def test_zipf_weights_follow_one_over_k_to_the_s():
    weights = zipf_weights(100, 1.1)
    assert sum(weights) == pytest.approx(1.0)
    harmonic = sum(1 / k**1.1 for k in range(1, 101))
    assert weights[0] == pytest.approx(1 / harmonic)
    assert weights[1] / weights[0] == pytest.approx(2**-1.1)
    assert zipf_weights(4, 0.0) == pytest.approx([0.25] * 4)  # s = 0 is uniform
    with pytest.raises(ValueError):
        zipf_weights(0, 1.1)


def test_zipf_plan_asks_the_top_question_as_often_as_theory_says():
    universe = questions_named(100)
    plan = popularity_plan(universe, 20_000, "zipf", 1.1, random.Random(7))
    counts = Counter(plan)
    expected = zipf_weights(100, 1.1)
    assert counts[universe[0]] / 20_000 == pytest.approx(expected[0], abs=0.01)  # ~0.234 (s = 1.0 would give 0.193)
    assert counts[universe[9]] / 20_000 == pytest.approx(expected[9], abs=0.006)
    assert counts[universe[0]] > 5 * counts[universe[9]]  # rank order is list order
    assert set(plan) <= set(universe)


def test_uniform_plan_spreads_requests_evenly():
    universe = questions_named(10)
    counts = Counter(popularity_plan(universe, 20_000, "uniform", 1.1, random.Random(8)))
    assert len(counts) == 10
    assert all(1800 <= n <= 2200 for n in counts.values())
    with pytest.raises(ValueError):
        popularity_plan(universe, 5, "pareto", 1.1, random.Random(0))


def test_plans_are_seeded():
    universe = questions_named(50)
    one = popularity_plan(universe, 300, "zipf", 1.1, random.Random(5))
    assert one == popularity_plan(universe, 300, "zipf", 1.1, random.Random(5))
    assert one != popularity_plan(universe, 300, "zipf", 1.1, random.Random(6))


def test_burst_offsets_group_requests_at_the_same_mean_rate():
    offsets = arrival_offsets(1000, 5.0, "burst", random.Random(0), burst_size=10)
    assert offsets[:10] == [0.0] * 10 and offsets[10] == pytest.approx(2.0)  # 10 at once, every 10/5 s
    bursts = sorted(set(offsets))
    assert len(bursts) == 100
    # 1000 requests over 100 bursts 2 s apart: 200 s, the 5 req/s asked for
    assert 1000 / (bursts[-1] + 10 / 5.0) == pytest.approx(5.0)
    assert statistics.mean(b - a for a, b in itertools.pairwise(bursts)) == pytest.approx(2.0)
    assert burst_offsets(5, 1.0, 2) == [0.0, 0.0, 2.0, 2.0, 4.0]  # the last burst may be smaller
    with pytest.raises(ValueError):
        burst_offsets(5, 1.0, 0)


def test_source_labels_come_from_the_status_and_the_body():
    assert source_of(200, {"source": "cache"}) == "cache"
    assert source_of(200, {"source": "database"}) == "database"
    assert source_of(200, {}) == "error"
    assert source_of(202, {"status": "pending"}) == "pending"
    assert source_of(400, {"error": "invalid_field"}) == "rejected"
    assert source_of(413, {}) == "rejected"
    assert source_of(503, {"error": "queue_unavailable"}) == "error"
    assert source_of(None, {}) == "error"


def test_requests_csv_has_one_row_per_request_in_send_order(tmp_path):
    summary = Summary(
        outcomes=[
            Outcome(200, "found (cache)", 0.002, "q1", "cache", 0.5),
            Outcome(202, "pending", 0.0105, "q1", "pending", 0.0),
            Outcome(None, "error: ConnectTimeout", 1.0, "q2", "error", 1.25),
        ],
        elapsed_s=2.0,
    )
    path = tmp_path / "requests.csv"
    summary.write_requests_csv(path)
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["sent_at_s", "question_id", "http_status", "source", "latency_ms"]
    assert rows[1] == ["0.000000", "q1", "202", "pending", "10.500"]
    assert rows[2][1:4] == ["q1", "200", "cache"]
    assert rows[3] == ["1.250000", "q2", "", "error", "1000.000"]
    assert summary.by_source == {"cache": 1, "database": 0, "pending": 1, "error": 1, "rejected": 0}
    assert summary.answered_question_ids() == {"q1"}  # /status is only polled for what the server took
    assert summary.latency_percentiles_ms("cache")["max"] == pytest.approx(2.0)


def write_large_csv(path, rows: int, tail: bytes = b"") -> None:
    with path.open("wb") as handle:
        for i in range(rows):
            handle.write(f'"{i % 10 + 1}","Question number {i}?","body {i}","Answer {i}."\n'.encode())
        handle.write(tail)


def test_large_files_are_streamed_not_loaded(tmp_path):
    path = tmp_path / "train.csv"
    # 50k good rows, then bytes that are not UTF-8: whoever reads the whole file fails on them
    write_large_csv(path, 50_000, tail=b'"1","\xff\xfe broken","","x"\n')
    with pytest.raises(UnicodeDecodeError):
        read_questions(path)
    stream = iter_questions(path)
    assert next(stream).question_text == "Question number 0? body 0"
    first = first_questions(path, 100)
    assert len(first) == 100 and first[-1].original_answer == "Answer 99."


def test_reservoir_sample_keeps_only_n_rows_from_the_whole_file(tmp_path):
    path = tmp_path / "train.csv"
    write_large_csv(path, 50_000)
    tracemalloc.start()
    sample = sample_questions(path, 200, random.Random(3))
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(sample) == 200 and len(set(sample)) == 200
    assert peak < 2_000_000  # the file holds ~3 MB of text; 200 questions are ~100 kB
    numbers = [int(q.original_answer.split()[1].rstrip(".")) for q in sample]
    assert numbers == sorted(numbers)  # file order
    assert 15_000 < statistics.mean(numbers) < 35_000  # drawn from the whole file, not its head
    assert max(numbers) > 40_000
    assert sample == sample_questions(path, 200, random.Random(3))  # seeded
    assert len(sample_questions(path, 60_000, random.Random(3))) == 50_000  # fewer rows than asked


def test_cli_keeps_the_old_flags_and_adds_the_new_ones():
    old = parse_args(["--distribution", "constant", "--repeat-ratio", "0.5"])
    assert (old.arrivals, old.popularity, old.repeat_ratio) == ("constant", None, 0.5)
    new = parse_args(["--arrivals", "burst", "--rate", "4", "--burst-every", "2.5", "--popularity", "zipf"])
    assert (new.burst_size, new.zipf_s) == (10, 1.1)
    assert parse_args(["--arrivals", "burst"]).burst_size == 10
    for bad in (["--burst-size", "3", "--burst-every", "1"], ["--sample", "5", "--limit", "5"], ["--questions", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_the_zipf_plan_of_the_cli_ranks_the_first_rows_highest(tmp_path):
    path = tmp_path / "q.csv"
    write_large_csv(path, 1000)
    args = parse_args(
        ["--csv", str(path), "--popularity", "zipf", "--questions", "50", "--count", "2000", "--seed", "1"]
    )
    plan, size = build_plan(args, random.Random(args.seed))
    counts = Counter(q.original_answer for q in plan)
    assert size == 50 and len(plan) == 2000
    assert counts.most_common(1)[0][0] == "Answer 0."
    assert set(counts) <= {f"Answer {i}." for i in range(50)}
    config = configuration(args, size)
    assert config["popularity"] == "zipf" and config["universe_size"] == 50 and config["csv"] == str(path)
