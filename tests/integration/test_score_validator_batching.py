"""The micro-batching scorer on the real shipped model (in process, no stack): a pair's score does
not depend on its batch mates, on the cache, or on the implementation (bert_score's own, one pair
per call, is the reference), within 1e-4 on the calibration set."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import REGISTRY

from score_validator.bench import calibration_pairs
from score_validator.config import ScoreValidatorSettings
from score_validator.scorer import Pair, Scorer, resolve_model

TOLERANCE = 1e-4


PAIRS = calibration_pairs()


def settings(**overrides) -> ScoreValidatorSettings:
    return ScoreValidatorSettings(bertscore_model="all-MiniLM-L6-v2", bertscore_num_layers=6, **overrides)


@pytest.fixture(scope="module")
def batched():
    scorer = Scorer(settings(scorer_max_batch=32, scorer_batch_window_ms=5))
    yield scorer
    scorer.close()


@pytest.fixture(scope="module")
def single():
    scorer = Scorer(settings(scorer_max_batch=1, scorer_reference_cache_mb=0))
    yield scorer
    scorer.close()


@pytest.fixture(scope="module")
def bert_score_single():
    """bert_score's own result, one pair per call (no padding anywhere): the reference."""
    from bert_score import BERTScorer

    baseline = settings().baseline_file()
    scorer = BERTScorer(
        model_type=resolve_model("all-MiniLM-L6-v2"),
        num_layers=6,
        lang="en",
        rescale_with_baseline=True,
        baseline_path=str(baseline),
        device="cpu",
    )

    def score(pairs: list[Pair], batch_size: int = 1) -> list[tuple[float, float, float]]:
        p, r, f = scorer.score([x.candidate for x in pairs], [x.reference for x in pairs], batch_size=batch_size)
        return list(zip(p.tolist(), r.tolist(), f.tolist(), strict=True))

    return score


def triples(scores) -> list[tuple[float, float, float]]:
    return [(s.precision, s.recall, s.f1) for s in scores]


def largest_difference(a, b) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for pa, pb in zip(a, b, strict=True) for x, y in zip(pa, pb, strict=True))


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_batched_equals_bert_score_one_pair_per_call(batched, bert_score_single):
    assert largest_difference(triples(batched.score(PAIRS)), bert_score_single(PAIRS)) < TOLERANCE


def test_batched_equals_single_pair_calls_of_the_same_scorer(batched, single):
    calls = sample("yahoo_score_batch_size_count")
    pairs_scored = sample("yahoo_score_batch_size_sum")
    batched_scores = triples(batched.score(PAIRS))
    # the 210 pairs really went through shared model calls (at most 32 each)
    assert sample("yahoo_score_batch_size_sum") - pairs_scored == len(PAIRS)
    assert sample("yahoo_score_batch_size_count") - calls < len(PAIRS) / 4
    assert largest_difference(batched_scores, triples(single.score(PAIRS))) < TOLERANCE


def test_bert_scores_own_padded_batches_do_move_scores(bert_score_single):
    """Why the matching is per pair: bert_score's padded batch clamps negative best similarities to 0."""
    assert largest_difference(bert_score_single(PAIRS, batch_size=64), bert_score_single(PAIRS)) > TOLERANCE


def test_a_cached_reference_gives_the_same_score(batched):
    pairs = PAIRS[:30]
    first = triples(batched.score(pairs))
    hits = sample("yahoo_score_reference_cache_total", result="hit")
    again = triples(batched.score(pairs))
    assert sample("yahoo_score_reference_cache_total", result="hit") - hits >= 20
    assert largest_difference(first, again) < 1e-6


def test_concurrent_callers_share_model_calls_and_get_their_own_scores(batched, single):
    expected = triples(single.score(PAIRS[:64]))
    calls = sample("yahoo_score_batch_size_count")
    start = threading.Barrier(8)

    def one(pair: Pair):
        return batched.score([pair])[0]

    def first_waits(index: int):
        if index < 8:
            start.wait(10)
        return one(PAIRS[index])

    with ThreadPoolExecutor(8) as pool:
        got = triples(list(pool.map(first_waits, range(64))))
    assert largest_difference(got, expected) < TOLERANCE
    assert sample("yahoo_score_batch_size_count") - calls < 64  # some calls held several requests


def test_a_pair_with_nothing_to_compare_never_reaches_the_model(batched):
    calls = sample("yahoo_score_batch_size_count")
    [score] = batched.score([Pair("", "The capital of Chile is Santiago.")])
    assert (score.f1, sample("yahoo_score_batch_size_count") - calls) == (0.0, 0)
