"""BERTScore as bert_score computes it (idf off), in two steps so that embeddings can be kept.

bert_score.BERTScorer.score embeds every sentence of a call and throws the embeddings away, so a
regeneration scored against the same reference pays for the reference again. And in a padded batch
its greedy matching multiplies padded similarities by 0 before taking the max, so a token whose real
similarities are all negative gets 0 instead of its best (negative) similarity: in a batch, a pair's
score depends on its batch mates. Here the two steps are apart:

1. `embed`: token ids -> the hidden states of layer N (bert_score's truncated model, so its output
   is that layer), one forward pass per group of similar lengths, right-padded with an attention
   mask; each text's vectors are cut to its own length and scaled to unit length.
2. `match`: one pair, unpadded: cosine similarities, each candidate token's best match (precision)
   and each reference token's best match (recall), averaged with weight 1 per token and 0 for [CLS]
   and [SEP] (bert_score's weights with idf off), F1 = 2PR/(P+R), then the baseline rescale
   (x - b) / (1 - b) per P, R and F.

Loading and tokenising are bert_score's own (get_model, get_tokenizer, sent_encode). That this
equals bert_score.BERTScorer.score(batch_size=1) within 1e-4 on the calibration set is tested in
tests/integration/test_score_validator_batching.py.
"""

from __future__ import annotations

import csv
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from score_validator.batching import plan_chunks

# Padded tokens per forward pass (count x longest): bounds one pass's memory, and a 512-token text
# (the model's limit) still shares a pass with 7 others.
MAX_TOKENS_PER_PASS = 4096

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


@dataclass(frozen=True)
class Embedded:
    """One text: a unit vector per token, and each token's weight (summing to 1, or all 0).

    NumPy float32, not torch: the matching is a few small operations per pair, and torch sends each
    through its intra-op thread pool. Measured on 2 busy cores, one pair's match took 2.8 ms in
    torch against 13 us in NumPy (the same float32 results within 2e-7).
    """

    vectors: np.ndarray  # [tokens, dim], float32
    weights: np.ndarray  # [tokens], float32

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.weights.nbytes)


@dataclass(frozen=True)
class Baseline:
    """The rescaling baseline of one layer (bert_score's file format: LAYER,P,R,F; row = layer)."""

    precision: float
    recall: float
    f1: float

    @classmethod
    def read(cls, path: Path, layer: int) -> Baseline:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        row = rows[layer]  # bert_score reads the row by position, not by its LAYER value
        return cls(float(row["P"]), float(row["R"]), float(row["F"]))


def token_weights(ids: Sequence[int], ignored_ids: frozenset[int]) -> list[float]:
    """bert_score's weights with idf off: 1 per token, 0 for [CLS] and [SEP] (wherever they are)."""
    return [0.0 if i in ignored_ids else 1.0 for i in ids]


def match(candidate: Embedded, reference: Embedded) -> tuple[float, float, float]:
    """Raw precision, recall and F1 of one pair by greedy cosine matching, with no padding at all."""
    similarity = candidate.vectors @ reference.vectors.T  # [candidate tokens, reference tokens]
    precision = np.float32((similarity.max(axis=1) * candidate.weights).sum())
    recall = np.float32((similarity.max(axis=0) * reference.weights).sum())
    # in float32, as bert_score computes it (it turns the NaN of 0/0 into 0)
    f1 = 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))
    return float(precision), float(recall), f1


def rescale(value: float, base: float) -> float:
    return (value - base) / (1 - base)


class LruCache(Generic[Key, Value]):
    """A bounded least-recently-used map, sized in bytes (`size_of`); thread-safe."""

    def __init__(self, max_bytes: int, size_of: Callable[[Value], int]) -> None:
        self.max_bytes, self._size_of = max_bytes, size_of
        self._entries: OrderedDict[Key, tuple[Value, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: Key) -> Value | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Key, value: Value) -> None:
        size = self._size_of(value)
        if size > self.max_bytes:
            return  # would evict everything else and still not fit
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted


class BertScoreModel:
    """A model truncated at `num_layers` and its tokenizer, loaded once per process."""

    def __init__(self, model_path: str, num_layers: int | None, baseline_file: Path | None) -> None:
        import torch
        from bert_score.utils import get_model, get_tokenizer, model2layers

        self._torch = torch
        self.num_layers: int = num_layers if num_layers is not None else model2layers[model_path]
        self.tokenizer = get_tokenizer(model_path)
        self.model = get_model(model_path, self.num_layers)
        self.model.to("cpu")
        self.baseline = Baseline.read(baseline_file, self.num_layers) if baseline_file else None
        self.ignored_ids = frozenset(
            i for i in (self.tokenizer.cls_token_id, self.tokenizer.sep_token_id) if i is not None
        )
        # The tokenizer is shared by every HTTP thread; its fast (Rust) form refuses concurrent
        # calls that change its truncation settings, which bert_score's encode does.
        self._tokenizer_lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        """bert_score's token ids of `text`: [CLS] ... [SEP], stripped, truncated; none for a blank text."""
        from bert_score.utils import sent_encode

        if not text.strip():
            return []  # sent_encode's own path for an empty text crashes on transformers 5
        with self._tokenizer_lock:
            return list(sent_encode(self.tokenizer, text))

    def embed(self, texts: Sequence[Sequence[int]]) -> list[Embedded]:
        """Each text's unit vectors and weights; forward passes grouped by length (plan_chunks)."""
        torch = self._torch
        out: list[Embedded | None] = [None] * len(texts)
        for chunk in plan_chunks([len(t) for t in texts], max_tokens=MAX_TOKENS_PER_PASS):
            longest = max(len(texts[i]) for i in chunk)
            ids = torch.full((len(chunk), longest), self.tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros((len(chunk), longest), dtype=torch.long)
            for row, index in enumerate(chunk):
                ids[row, : len(texts[index])] = torch.tensor(texts[index], dtype=torch.long)
                mask[row, : len(texts[index])] = 1
            with torch.inference_mode():
                hidden = self.model(ids, attention_mask=mask)[0]
                for row, index in enumerate(chunk):
                    own = hidden[row, : len(texts[index])]
                    # a new array of its own: a cached reference must not keep the padded batch alive
                    vectors = (own / own.norm(dim=-1, keepdim=True)).numpy()
                    weights = np.array(token_weights(texts[index], self.ignored_ids), dtype=np.float32)
                    total = weights.sum()
                    out[index] = Embedded(vectors, weights / total if total > 0 else weights)
        return [e for e in out if e is not None]

    def rescaled(self, raw: tuple[float, float, float]) -> tuple[float, float, float]:
        if self.baseline is None:
            return raw
        b = self.baseline
        return rescale(raw[0], b.precision), rescale(raw[1], b.recall), rescale(raw[2], b.f1)
