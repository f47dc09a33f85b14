"""The defined score of a pair with nothing to compare (score_validator/scorer.py), without the model."""

from __future__ import annotations

import pytest

from score_validator.scorer import has_words, nothing_to_compare_score

IGNORED = frozenset({"[CLS]", "[SEP]"})


def tokenize(text: str) -> list[str]:
    """Like a BERT tokenizer: drops control and zero-width characters, keeps markers as tokens."""
    return [w for w in text.replace("\u200b", " ").split() if w.isprintable()]


@pytest.mark.parametrize("text", ["", " ", "\n\t ", "\u3000", "\u00a0", "\u200b", "\x01\x02", "[CLS] [SEP]"])
def test_texts_without_words(text):
    assert not has_words(text, tokenize, IGNORED)


@pytest.mark.parametrize("text", ["a", "Santiago.", " [PAD] ", "🙂"])
def test_texts_with_words(text):
    assert has_words(text, tokenize, IGNORED)


def test_the_empty_score_is_zero_everywhere():
    score = nothing_to_compare_score("m/L6/rescaled")
    assert (score.precision, score.recall, score.f1, score.model) == (0.0, 0.0, 0.0, "m/L6/rescaled")
