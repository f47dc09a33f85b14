import itertools
import random
import statistics

import pytest

from common.dataset import SAMPLE_CSV, Question, read_questions
from traffic_generator.generator import Outcome, Summary, arrival_offsets, choose_requests


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
