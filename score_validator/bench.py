"""The scorer's throughput: pairs/s one pair per model call vs micro-batched, at N requests in flight.

    python -m score_validator.bench [--in-flight 8] [--pairs 420] [--url http://localhost:8000]

In process (the default) it loads the configured model once per mode and measures, in one run
(each mode `--rounds` times in turn, its best round kept):
- `bert_score_per_pair`: bert_score.BERTScorer.score(batch_size=1) under a lock, the scorer before
  this change;
- `single`: SCORER_MAX_BATCH=1 and no reference cache: one model call per pair (the scorer before
  micro-batching);
- `batched`: SCORER_MAX_BATCH (32 by default), no reference cache: what coalescing alone gives;
- `batched_cached`: batched with the reference cache, on the calibration workload where each
  reference is scored 7 times (a correct answer, a wrong one, five unrelated texts).
Every mode scores the same pairs (the calibration set, repeated) from `in_flight` threads, one pair
per call, as the Flink job sends them. With `--url` it measures a running scorer over HTTP instead
(`POST /score`, one pair per request), as the server is configured.

`bench_scorer()` and `http_pairs_per_second()` return plain dicts for `make bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle, islice

from score_validator.calibrate import UNRELATED_OFFSETS, load_labelled
from score_validator.config import ScoreValidatorSettings
from score_validator.scorer import Pair, Scorer, resolve_model, scorer_parallelism, usable_cpu_count

MODES: dict[str, dict[str, float]] = {
    "single": {"scorer_max_batch": 1, "scorer_reference_cache_mb": 0},
    "batched": {"scorer_reference_cache_mb": 0},
    "batched_cached": {},
}


def calibration_pairs() -> list[Pair]:
    """The calibration workload: per question a correct and a wrong answer, and unrelated pairs."""
    rows = load_labelled()
    refs = [r["reference"] for r in rows]
    n = len(rows)
    return (
        [Pair(r["correct"], r["reference"]) for r in rows]
        + [Pair(r["wrong"], r["reference"]) for r in rows]
        + [Pair(refs[i], refs[(i + k) % n]) for k in UNRELATED_OFFSETS for i in range(n)]
    )


def pairs_per_second(score_one: Callable[[Pair], object], pairs: list[Pair], in_flight: int) -> float:
    """Scores every pair, `in_flight` calls at a time, one pair per call; pairs per wall-clock second."""
    feed: Iterator[Pair] = iter(pairs)
    lock = threading.Lock()

    def worker() -> int:
        done = 0
        while True:
            with lock:
                pair = next(feed, None)
            if pair is None:
                return done
            score_one(pair)
            done += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        done = sum(pool.map(lambda _: worker(), range(in_flight)))
    return done / (time.perf_counter() - started)


def machine() -> dict[str, object]:
    return {
        "cpus_usable": usable_cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def bench_scorer(
    in_flight: int = 8, n_pairs: int = 420, rounds: int = 2, settings: ScoreValidatorSettings | None = None
) -> dict:
    """Pairs/s of each mode on the same pairs, in one run, and the ratios to one pair per call.

    Every mode is loaded first, then measured `rounds` times in turn, and its best round is kept:
    other load on the machine then slows every mode alike instead of whichever ran at that moment.
    """
    import torch

    settings = settings or ScoreValidatorSettings()
    parallelism = scorer_parallelism(settings.scorer_workers, settings.torch_num_threads, usable_cpu_count())
    base = calibration_pairs()
    pairs = list(islice(cycle(base), n_pairs))
    loaded = {mode: Scorer(settings.model_copy(update=overrides)) for mode, overrides in MODES.items()}
    scorers = {"bert_score_per_pair": bert_score_per_pair(settings)}
    scorers.update({mode: one_pair_at_a_time(scorer) for mode, scorer in loaded.items()})
    rates: dict[str, float] = {}
    try:
        for score_one in scorers.values():
            for pair in base[:8]:  # warm-up: first calls allocate
                score_one(pair)
        for _ in range(rounds):
            for mode, score_one in scorers.items():
                # torch's thread count is the process's: each mode runs with the one it was made for
                torch.set_num_threads(
                    usable_cpu_count() if mode == "bert_score_per_pair" else parallelism.torch_threads
                )
                rates[mode] = max(rates.get(mode, 0.0), round(pairs_per_second(score_one, pairs, in_flight), 1))
    finally:
        for scorer in loaded.values():
            scorer.close()
    return {
        "in_flight": in_flight,
        "pairs": n_pairs,
        "rounds": rounds,
        "max_batch": settings.scorer_max_batch,
        "batch_window_ms": settings.scorer_batch_window_ms,
        "scorer_workers": parallelism.workers,
        "torch_threads": parallelism.torch_threads,
        "model": settings.bertscore_model,
        "pairs_per_s": rates,
        "batched_vs_bert_score_per_pair": round(rates["batched"] / rates["bert_score_per_pair"], 2),
        "batched_vs_single": round(rates["batched"] / rates["single"], 2),
        "batched_cached_vs_single": round(rates["batched_cached"] / rates["single"], 2),
        "machine": machine(),
    }


def one_pair_at_a_time(scorer: Scorer) -> Callable[[Pair], object]:
    return lambda pair: scorer.score([pair])


def bert_score_per_pair(settings: ScoreValidatorSettings) -> Callable[[Pair], object]:
    """The scorer before micro-batching: one bert_score call per pair, one call at a time, with
    every core as torch threads (bench_scorer sets them while it measures this mode)."""
    from bert_score import BERTScorer

    baseline = settings.baseline_file()
    scorer = BERTScorer(
        model_type=resolve_model(settings.bertscore_model),
        num_layers=settings.bertscore_num_layers,
        lang=settings.bertscore_lang,
        rescale_with_baseline=baseline is not None,
        baseline_path=str(baseline) if baseline else None,
        device="cpu",
    )
    lock = threading.Lock()

    def score_one(pair: Pair) -> object:
        with lock:
            return scorer.score([pair.candidate], [pair.reference], batch_size=1, verbose=False)

    return score_one


def http_pairs_per_second(url: str, in_flight: int = 8, n_pairs: int = 420, timeout_s: float = 60) -> dict:
    """Pairs/s of a running scorer, `POST /score` one pair per request, `in_flight` at once."""
    import requests

    pairs = list(islice(cycle(calibration_pairs()), n_pairs))
    local = threading.local()

    def score_one(pair: Pair) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        resp = session.post(
            f"{url.rstrip('/')}/score",
            json={"candidate": pair.candidate, "reference": pair.reference},
            timeout=timeout_s,
        )
        resp.raise_for_status()

    return {
        "url": url,
        "in_flight": in_flight,
        "pairs": n_pairs,
        "pairs_per_s": round(pairs_per_second(score_one, pairs, in_flight), 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="score_validator.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=420)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--url", help="measure a running scorer over HTTP instead of in process")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.url:
        result = http_pairs_per_second(args.url, args.in_flight, args.pairs)
    else:
        result = bench_scorer(args.in_flight, args.pairs, args.rounds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
