"""The shipped default (all-MiniLM-L6-v2, layer 6, rescaled with the shipped baseline) on the
labelled sample: what the 0.75 threshold means must hold for the model the stack really loads."""

import statistics

import pytest

from score_validator.calibrate import load_labelled
from score_validator.config import ScoreValidatorSettings
from score_validator.scorer import Pair, Scorer


@pytest.fixture(scope="module")
def scorer():
    return Scorer(
        ScoreValidatorSettings(
            bertscore_model="all-MiniLM-L6-v2", bertscore_num_layers=6, bertscore_rescale=True, torch_num_threads=2
        )
    )


def mean_f1(scorer, pairs):
    return statistics.fmean(s.f1 for s in scorer.score([Pair(c, r) for c, r in pairs]))


def test_default_model_is_rescaled_with_the_shipped_baseline(scorer):
    assert scorer.label == "all-MiniLM-L6-v2/L6/rescaled"


def test_rescaled_scores_order_correct_over_wrong_over_unrelated(scorer):
    rows = load_labelled()
    correct = mean_f1(scorer, [(r["correct"], r["reference"]) for r in rows])
    wrong = mean_f1(scorer, [(r["wrong"], r["reference"]) for r in rows])
    unrelated = mean_f1(scorer, [(rows[i]["reference"], rows[i - 1]["reference"]) for i in range(len(rows))])
    assert correct >= 0.75 > wrong > unrelated
    assert abs(unrelated) < 0.1  # the baseline puts unrelated text at about zero


def test_scores_do_not_depend_on_batch_mates(scorer):
    pair = Pair("I like turtles very much.", "The capital of Chile is Santiago.")
    alone = scorer.score([pair])[0].f1
    with_long_mate = scorer.score([Pair("word " * 60, "another " * 50), pair])[1].f1
    assert with_long_mate == pytest.approx(alone, abs=1e-6)
