"""python -m traffic_generator [--csv FILE] [--count N] [--rate R] [--distribution constant|poisson] ..."""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from tqdm import tqdm

from common.dataset import read_questions
from traffic_generator.config import TrafficSettings
from traffic_generator.generator import DISTRIBUTIONS, TrafficGenerator, arrival_offsets, choose_requests


def parse_args(argv: list[str]) -> argparse.Namespace:
    settings = TrafficSettings()
    parser = argparse.ArgumentParser(prog="traffic_generator", description=__doc__)
    parser.add_argument(
        "--csv",
        type=Path,
        default=settings.traffic_csv,
        help="Yahoo Answers CSV: class, title, content, best_answer (no header)",
    )
    parser.add_argument("--url", default=settings.storage_url, help="storage_service (STORAGE_URL)")
    parser.add_argument("--count", type=int, default=settings.traffic_count)
    parser.add_argument("--rate", type=float, default=settings.traffic_rate, help="requests per second")
    parser.add_argument("--distribution", choices=DISTRIBUTIONS, default=settings.traffic_distribution)
    parser.add_argument(
        "--repeat-ratio",
        type=float,
        default=settings.traffic_repeat_ratio,
        help="share of requests that repeat a question already sent (cache hits)",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="then wait up to SECONDS for every question's pipeline outcome",
    )
    parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
    args = parser.parse_args(argv)
    if args.count < 1 or args.rate <= 0 or not 0 <= args.repeat_ratio <= 1:
        parser.error("--count must be >= 1, --rate > 0, --repeat-ratio within [0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rng = random.Random(args.seed)
    questions = read_questions(args.csv)
    plan = choose_requests(questions, args.count, args.repeat_ratio, rng)
    offsets = arrival_offsets(args.count, args.rate, args.distribution, rng)
    generator = TrafficGenerator(args.url)
    print(f"sending {args.count} questions from {args.csv} to {args.url} at {args.rate}/s ({args.distribution})")
    with tqdm(total=args.count, unit="req") as progress:
        summary = generator.run(plan, offsets, progress)
    if args.wait > 0:
        generator.wait_for_outcomes(summary, args.wait)
    print(summary.render())
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "sent": len(summary.outcomes),
                    "distinct_questions": len({o.question_id for o in summary.outcomes if o.question_id}),
                    "elapsed_s": summary.elapsed_s,
                    "counts": dict(summary.counts),
                    "latency_ms": summary.latency_percentiles_ms(),
                    "final_statuses": dict(summary.final_statuses),
                },
                indent=2,
            )
        )
    return 0 if all(o.status is not None and o.status < 500 for o in summary.outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
