"""score_validator's micro-batching, reference cache and matching, without the model."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from score_validator.batching import Coalescer, flush_due, plan_chunks
from score_validator.bertscore import Baseline, Embedded, LruCache, match, rescale, token_weights
from score_validator.scorer import Parallelism, scorer_parallelism

# --- when a batch leaves ----------------------------------------------------------------------


def test_nothing_queued_never_flushes():
    assert not flush_due(0, 10.0, max_batch=32, window_s=0.005)


def test_a_full_batch_leaves_at_once():
    assert flush_due(32, 0.0, max_batch=32, window_s=0.005)
    assert not flush_due(31, 0.0, max_batch=32, window_s=0.005)


def test_a_lone_pair_leaves_when_the_window_has_passed():
    assert not flush_due(1, 0.004, max_batch=32, window_s=0.005)
    assert flush_due(1, 0.005, max_batch=32, window_s=0.005)


def test_window_zero_or_batch_of_one_means_no_waiting():
    assert flush_due(1, 0.0, max_batch=32, window_s=0.0)
    assert flush_due(1, 0.0, max_batch=1, window_s=1.0)


# --- how a batch is split into forward passes ---------------------------------------------------


def test_passes_go_shortest_first_and_split_where_length_doubles():
    lengths = [40, 10, 12, 11, 45, 30]
    assert plan_chunks(lengths, max_tokens=4096) == [[1, 3, 2], [5, 0, 4]]


def test_a_pass_never_exceeds_the_token_budget_unless_one_text_alone_does():
    lengths = [100] * 5 + [600]
    chunks = plan_chunks(lengths, max_tokens=256)
    assert chunks == [[0, 1], [2, 3], [4], [5]]
    assert sorted(i for c in chunks for i in c) == list(range(6))


def test_no_texts_no_passes():
    assert plan_chunks([], max_tokens=4096) == []


# --- the coalescer, with a fake model ----------------------------------------------------------


class FakeModel:
    """Doubles numbers; raises on a negative one; records each call's batch."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[list[int]] = []
        self.gate = gate

    def __call__(self, items: list[int]) -> list[int]:
        if self.gate is not None:
            self.gate.wait(5)
        self.calls.append(list(items))
        if any(i < 0 for i in items):
            raise ValueError(f"cannot score {min(items)}")
        return [2 * i for i in items]


def test_concurrent_submitters_each_get_their_own_result_in_shared_batches():
    gate = threading.Event()
    model = FakeModel(gate)
    coalescer = Coalescer(model, max_batch=8, window_s=60.0)  # only a full batch (or close) flushes
    results: dict[int, int] = {}

    def submit(n: int) -> None:
        results[n] = coalescer.submit(n).result(timeout=10)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    coalescer.close()
    assert results == {n: 2 * n for n in range(16)}
    assert sorted(len(c) for c in model.calls) == [8, 8]  # two model calls for 16 requests


def test_a_raising_pair_fails_alone_and_its_batch_mates_are_scored():
    model = FakeModel()
    coalescer = Coalescer(model, max_batch=4, window_s=60.0)
    futures = [coalescer.submit(n) for n in (1, -5, 3, 4)]
    assert [f.result(timeout=10) for f in (futures[0], futures[2], futures[3])] == [2, 6, 8]
    with pytest.raises(ValueError, match="cannot score -5"):
        futures[1].result(timeout=10)
    coalescer.close()
    assert model.calls[0] == [1, -5, 3, 4] and sorted(map(tuple, model.calls[1:])) == [(-5,), (1,), (3,), (4,)]


def test_the_window_flushes_a_lone_request():
    model = FakeModel()
    sizes: list[int] = []
    coalescer = Coalescer(model, max_batch=32, window_s=0.01, on_batch=sizes.append)
    assert coalescer.submit(21).result(timeout=10) == 42
    coalescer.close()
    assert model.calls == [[21]] and sizes == [1]


def test_score_keeps_order_and_a_batch_of_one_calls_the_model_per_item():
    model = FakeModel()
    coalescer = Coalescer(model, max_batch=1, window_s=60.0)
    assert coalescer.score([3, 1, 2]) == [6, 2, 4]
    coalescer.close()
    assert model.calls == [[3], [1], [2]]


def test_a_model_returning_the_wrong_count_is_an_error_not_a_misrouted_score():
    coalescer: Coalescer[int, int] = Coalescer(lambda items: items[:1], max_batch=2, window_s=60.0)
    first, second = coalescer.submit(1), coalescer.submit(2)
    assert first.result(timeout=10) == 1 and second.result(timeout=10) == 2  # retried one by one
    coalescer.close()


def test_close_scores_what_is_queued_before_stopping():
    model = FakeModel()
    coalescer = Coalescer(model, max_batch=32, window_s=60.0)  # neither size nor window would flush
    future = coalescer.submit(5)
    coalescer.close()
    assert future.result(timeout=10) == 10 and model.calls == [[5]]


def test_workers_score_batches_side_by_side():
    both_in = threading.Barrier(2, timeout=5)  # passes only when two model calls run at once

    def model(items: list[int]) -> list[int]:
        both_in.wait()
        return [2 * i for i in items]

    coalescer = Coalescer(model, max_batch=1, window_s=0.0, workers=2)
    futures = [coalescer.submit(n) for n in (1, 2)]
    assert [f.result(timeout=10) for f in futures] == [2, 4]
    coalescer.close()


def test_one_worker_never_runs_two_model_calls_at_once():
    running, peak = [0], [0]
    lock = threading.Lock()

    def model(items: list[int]) -> list[int]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        threading.Event().wait(0.01)
        with lock:
            running[0] -= 1
        return items

    coalescer = Coalescer(model, max_batch=1, window_s=0.0)
    assert coalescer.score([1, 2, 3, 4]) == [1, 2, 3, 4]
    coalescer.close()
    assert peak == [1]


def test_nothing_is_accepted_after_close():
    coalescer = Coalescer(FakeModel(), max_batch=2, window_s=0.0)
    coalescer.close()
    with pytest.raises(RuntimeError):
        coalescer.submit(1)


# --- the reference cache -----------------------------------------------------------------------


def test_the_cache_evicts_the_least_recently_used_within_its_byte_budget():
    cache: LruCache[str, bytes] = LruCache(10, len)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # a is now the most recently used
    cache.put("c", b"1234")
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (b"1234", None, b"1234")
    assert cache.bytes == 8 and len(cache) == 2


def test_the_cache_skips_a_value_larger_than_its_budget_and_a_zero_budget_keeps_nothing():
    cache: LruCache[str, bytes] = LruCache(3, len)
    cache.put("big", b"1234")
    assert cache.get("big") is None and cache.bytes == 0
    empty: LruCache[str, bytes] = LruCache(0, len)
    empty.put("a", b"1")
    assert empty.get("a") is None


def test_replacing_a_key_does_not_count_it_twice():
    cache: LruCache[str, bytes] = LruCache(10, len)
    cache.put("a", b"123")
    cache.put("a", b"12345")
    assert cache.bytes == 5 and len(cache) == 1


# --- the matching ------------------------------------------------------------------------------


def unit(rows: list[list[float]]) -> np.ndarray:
    t = np.array(rows, dtype=np.float32)
    return t / np.linalg.norm(t, axis=-1, keepdims=True)


def embedded(rows: list[list[float]], weights: list[float]) -> Embedded:
    w = np.array(weights, dtype=np.float32)
    return Embedded(unit(rows), w / w.sum())


def test_weights_drop_cls_and_sep_wherever_they_are():
    assert token_weights([101, 7, 101, 8, 102], frozenset({101, 102})) == [0.0, 1.0, 0.0, 1.0, 0.0]


def test_identical_texts_match_fully():
    text = embedded([[1, 0], [0, 1], [1, 1]], [0, 1, 0])
    assert match(text, text) == pytest.approx((1.0, 1.0, 1.0))


def test_a_negative_best_similarity_is_kept_not_clamped_to_zero():
    """bert_score's padded batches turn this into 0 (padding x 0 wins the max): here it stays -1."""
    candidate = embedded([[1, 0]], [1])
    reference = embedded([[-1, 0]], [1])
    precision, recall, f1 = match(candidate, reference)
    assert precision == pytest.approx(-1.0) and recall == pytest.approx(-1.0) and f1 == pytest.approx(-1.0)


def test_precision_and_recall_take_each_sides_best_match():
    candidate = embedded([[1, 0], [0, 1]], [1, 1])  # both directions
    reference = embedded([[1, 0]], [1])  # only the first
    precision, recall, f1 = match(candidate, reference)
    assert precision == pytest.approx(0.5)  # (1 + 0) / 2
    assert recall == pytest.approx(1.0)
    assert f1 == pytest.approx(2 * 0.5 / 1.5)


def test_rescale_puts_the_baseline_at_zero_and_one_at_one():
    base = Baseline(0.1, 0.2, 0.3)
    assert rescale(base.f1, base.f1) == 0.0 and rescale(1.0, base.f1) == pytest.approx(1.0)


def test_baseline_file_row_is_the_layer(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("LAYER,P,R,F\n0,0.1,0.2,0.3\n1,0.4,0.5,0.6\n")
    assert Baseline.read(path, 1) == Baseline(0.4, 0.5, 0.6)


# --- torch threads -----------------------------------------------------------------------------


def test_unconfigured_scorer_runs_one_single_threaded_worker_per_cpu():
    assert scorer_parallelism(None, None, 6) == Parallelism(workers=6, torch_threads=1)
    assert scorer_parallelism(None, None, 0) == Parallelism(workers=1, torch_threads=1)


def test_what_is_configured_is_kept_and_the_rest_fills_the_cpus():
    assert scorer_parallelism(None, 2, 6) == Parallelism(workers=3, torch_threads=2)
    assert scorer_parallelism(None, 8, 6) == Parallelism(workers=1, torch_threads=8)
    assert scorer_parallelism(2, None, 6) == Parallelism(workers=2, torch_threads=3)
    assert scorer_parallelism(4, 4, 2) == Parallelism(workers=4, torch_threads=4)
