"""`python -m experiments [--matrix FILE] [--fast]` (make experiment): runs the matrix against a
running stack and writes reports/<UTC timestamp>/ (README, "Experiments")."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests

import redis
from common.settings import PROJECT_ROOT
from experiments.matrix import DEFAULT_MATRIX, MatrixError, fast, load_matrix
from experiments.run import run


def parse_args(argv: Sequence[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__)
    parser.add_argument("--matrix", type=Path, default=DEFAULT_MATRIX, help="a TOML matrix (experiments/matrices/)")
    parser.add_argument(
        "--stack",
        default=env.get("YAHOO_LLM_STACK") or "stack",
        help="the running stack's name [YAHOO_LLM_STACK or stack]",
    )
    parser.add_argument("--fast", action="store_true", help="CI mode: fewer requests per cell, a shorter warm-up wait")
    parser.add_argument(
        "--csv", type=Path, help="the questions (Yahoo Answers CSV); default: the matrix's or the sample"
    )
    parser.add_argument("--limit", type=int, help="only the first N usable rows of the CSV")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports", help="where the report folder goes")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = dict(os.environ) if env is None else env
    args = parse_args(argv, env)
    try:
        matrix = load_matrix(args.matrix)
    except (OSError, MatrixError) as exc:
        print(f"[experiment] {exc}")
        return 2
    if args.fast:
        matrix = fast(matrix)
    try:
        run(matrix, args.stack, env, args.out, csv=args.csv, limit=args.limit)
    except (redis.ConnectionError, requests.ConnectionError) as exc:
        print(f"[experiment] cannot reach the stack '{args.stack}' ({exc}): is it up? (make up)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
