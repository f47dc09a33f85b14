"""python -m traffic_generator [--csv FILE] [--count N] [--rate R] [--arrivals constant|poisson|burst]
[--popularity uniform|zipf] ...

Which question each request asks (popularity) is chosen apart from when it is sent (arrivals).
Without --popularity, the legacy mix applies: fresh questions in file order, --repeat-ratio of them
repeating one already sent. Large files (the Kaggle train.csv, 1.4M rows) are streamed: give
--sample N, --limit N or --questions N so only N questions are kept in memory.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.dataset import Question, first_questions, sample_questions
from traffic_generator.config import TrafficSettings
from traffic_generator.generator import (
    ARRIVALS,
    POPULARITIES,
    Summary,
    TrafficGenerator,
    arrival_offsets,
    choose_requests,
    popularity_plan,
    universe,
)

DEFAULT_BURST_SIZE = 10


def parse_args(argv: list[str]) -> argparse.Namespace:
    settings = TrafficSettings()
    parser = argparse.ArgumentParser(
        prog="traffic_generator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    data = parser.add_argument_group("questions")
    data.add_argument(
        "--csv",
        type=Path,
        default=settings.traffic_csv,
        help="Yahoo Answers CSV: class, title, content, best_answer (no header); streamed, never loaded whole",
    )
    rows = data.add_mutually_exclusive_group()
    rows.add_argument("--limit", type=int, metavar="N", help="read only the first N usable rows of the CSV")
    rows.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="a uniform random sample of N rows of the whole CSV (reservoir sampling in one pass; --seed)",
    )
    data.add_argument(
        "--questions",
        type=int,
        metavar="N",
        help="the universe: at most N distinct questions (default with --popularity: the first 100,000 rows); "
        "zipf rank = row order",
    )
    data.add_argument("--shuffle", action="store_true", help="shuffle the universe (seeded) before ranking it for zipf")

    traffic = parser.add_argument_group("traffic")
    traffic.add_argument("--url", default=settings.storage_url, help="storage_service (STORAGE_URL)")
    traffic.add_argument("--count", type=int, default=settings.traffic_count, help="requests to send")
    traffic.add_argument("--rate", type=float, default=settings.traffic_rate, help="mean requests per second")
    traffic.add_argument(
        "--arrivals",
        "--distribution",
        dest="arrivals",
        choices=ARRIVALS,
        default=settings.traffic_distribution,
        help="when requests are sent: constant spacing, poisson (exponential gaps), or burst "
        "(--burst-size requests at once, a burst every --burst-size/--rate seconds: same mean rate). "
        "--distribution is the old name",
    )
    traffic.add_argument(
        "--burst-size",
        type=int,
        metavar="N",
        help=f"requests per burst (default {DEFAULT_BURST_SIZE}; with --burst-every: rate x burst-every)",
    )
    traffic.add_argument(
        "--burst-every",
        type=float,
        metavar="SECONDS",
        help="seconds between bursts; sets --burst-size to round(rate x SECONDS) so the mean rate stays --rate",
    )
    traffic.add_argument(
        "--popularity",
        choices=POPULARITIES,
        help="which question each request asks: uniform over the universe, or zipf (rank k with "
        "probability proportional to 1/k^s). Not given: the legacy --repeat-ratio mix",
    )
    traffic.add_argument("--zipf-s", type=float, default=1.1, metavar="S", help="zipf exponent (default 1.1)")
    traffic.add_argument(
        "--repeat-ratio",
        type=float,
        default=settings.traffic_repeat_ratio,
        help="without --popularity: share of requests that repeat a question already sent (cache hits)",
    )
    traffic.add_argument("--seed", type=int, default=None, help="seeds sampling, shuffle, popularity and arrivals")
    traffic.add_argument(
        "--workers", type=int, default=16, help="concurrent requests at most (burst: at least --burst-size)"
    )

    out = parser.add_argument_group("output")
    out.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="then wait up to SECONDS for every question's pipeline outcome",
    )
    out.add_argument("--json", type=Path, help="also write the summary as JSON here")
    out.add_argument(
        "--requests-csv",
        type=Path,
        metavar="FILE",
        help="one row per request: sent_at_s,question_id,http_status,source,latency_ms "
        "(source: cache|database|pending|error|rejected)",
    )
    args = parser.parse_args(argv)
    problems = argument_problems(args)
    if problems:
        parser.error("; ".join(problems))
    args.burst_size = burst_size_of(args)
    return args


def argument_problems(args: argparse.Namespace) -> list[str]:
    problems = []
    if args.count < 1 or args.rate <= 0 or not 0 <= args.repeat_ratio <= 1:
        problems.append("--count must be >= 1, --rate > 0, --repeat-ratio within [0, 1]")
    for name in ("limit", "sample", "questions", "burst_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1")
    if args.burst_every is not None and args.burst_every <= 0:
        problems.append("--burst-every must be > 0")
    if args.burst_size is not None and args.burst_every is not None:
        problems.append("give --burst-size or --burst-every, not both (the other follows from --rate)")
    if args.zipf_s < 0:
        problems.append("--zipf-s must not be negative")
    if args.workers < 1:
        problems.append("--workers must be >= 1")
    return problems


def burst_size_of(args: argparse.Namespace) -> int:
    if args.burst_every is not None:
        return max(1, round(args.rate * args.burst_every))
    return args.burst_size if args.burst_size is not None else DEFAULT_BURST_SIZE


# A --popularity run with no --questions, --sample or --limit draws from the first this many rows:
# the whole Kaggle train.csv (1.4M rows) would take gigabytes of memory, and a working set this size
# is already far larger than any cache the experiments give Redis.
DEFAULT_UNIVERSE = 100_000


def load_questions(args: argparse.Namespace, rng: random.Random) -> list[Question]:
    """The rows read: a sample, the first rows, or (no option) every row; never more than needed.

    Without --popularity only the first --count rows can ever be sent, so only those are read."""
    if args.sample:
        return sample_questions(args.csv, args.sample, rng)
    cap = args.limit or args.questions or (DEFAULT_UNIVERSE if args.popularity else args.count)
    return first_questions(args.csv, cap)


def build_plan(args: argparse.Namespace, rng: random.Random) -> tuple[list[Question], int]:
    """The requests to send, and the size of the universe they are drawn from."""
    questions = load_questions(args, rng)
    if not args.popularity:
        return choose_requests(questions, args.count, args.repeat_ratio, rng), len(questions)
    pool = universe(questions, args.questions)
    if not pool:
        raise SystemExit(f"{args.csv}: no usable rows")
    if args.shuffle:
        rng.shuffle(pool)
    return popularity_plan(pool, args.count, args.popularity, args.zipf_s, rng), len(pool)


def configuration(args: argparse.Namespace, universe_size: int) -> dict[str, Any]:
    """Every parameter of the run, as the JSON summary records it."""
    config = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    config["universe_size"] = universe_size
    config["burst_every_s"] = args.burst_size / args.rate if args.arrivals == "burst" else None
    return config


def summary_json(summary: Summary, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "sent": len(summary.outcomes),
        "distinct_questions": len({o.question_id for o in summary.outcomes if o.question_id}),
        "elapsed_s": summary.elapsed_s,
        "started_at": summary.started_at,
        "counts": dict(summary.counts),
        "by_source": summary.by_source,
        "latency_ms": summary.latency_percentiles_ms(),
        "final_statuses": dict(summary.final_statuses),
        "config": config,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rng = random.Random(args.seed)
    plan, universe_size = build_plan(args, rng)
    offsets = arrival_offsets(args.count, args.rate, args.arrivals, rng, burst_size=args.burst_size)
    # A burst is sent at once only if that many requests can be in flight together.
    workers = max(args.workers, args.burst_size) if args.arrivals == "burst" else args.workers
    generator = TrafficGenerator(args.url, workers=workers)
    popularity = f"{args.popularity} over {universe_size}" if args.popularity else f"repeat {args.repeat_ratio}"
    print(
        f"sending {args.count} questions from {args.csv} to {args.url} at {args.rate}/s ({args.arrivals}, {popularity})"
    )
    with tqdm(total=args.count, unit="req") as progress:
        summary = generator.run(plan, offsets, progress)
    if args.wait > 0:
        with tqdm(total=len(summary.answered_question_ids()), unit="question", desc="terminal") as progress:
            generator.wait_for_outcomes(summary, args.wait, progress)
    print(summary.render())
    if args.requests_csv:
        summary.write_requests_csv(args.requests_csv)
    if args.json:
        args.json.write_text(json.dumps(summary_json(summary, configuration(args, universe_size)), indent=2))
    return 0 if all(o.status is not None and o.status < 500 for o in summary.outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
