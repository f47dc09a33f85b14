"""The checks the compose workflow (.github/workflows/compose.yml) runs against the container fleet.

Standard library only (the CI runner's own python3 runs it, from the repository root):

    docker compose config --format json | python3 scripts/compose_check.py wait-set
    docker compose exec -T kafka /opt/kafka/bin/kafka-topics.sh ... --list | python3 scripts/compose_check.py topics
    python3 scripts/compose_check.py flink-job --deadline 300
    python3 scripts/compose_check.py seed-question --deadline 600
    python3 scripts/compose_check.py prometheus-targets --deadline 180   (profile `observability`)

Each prints what it saw and exits non-zero when the fleet is not as it should be.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.flink_rest import MISSING, SCORE_JOB_NAME, job_spread, list_jobs, score_job
from common.topics import ALL_TOPICS, Status

# The README's example question, as the smoke test sends it to `make up`.
SEED_EXAMPLE = {"question_text": "¿Cuál es la capital de Chile?", "original_answer": "La capital de Chile es Santiago"}
TERMINAL = {Status.VALIDATED.value, Status.LOW_QUALITY.value, Status.FAILED.value}
SCORED = {Status.VALIDATED.value, Status.LOW_QUALITY.value}

T = TypeVar("T")


def is_one_shot(service: dict[str, Any]) -> bool:
    """A service that runs to completion (an init step), as opposed to one kept running."""
    return str(service.get("restart", "no")).split(":")[0] in ("no", "on-failure")


def adopted_one_shots(services: dict[str, dict[str, Any]]) -> set[str]:
    """One-shot services some other service waits for with `service_completed_successfully`."""
    adopted = set()
    for service in services.values():
        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, dict):
            for name, how in depends_on.items():
                if (how or {}).get("condition") == "service_completed_successfully":
                    adopted.add(name)
    return adopted


def wait_set(services: dict[str, dict[str, Any]]) -> list[str]:
    """The services `docker compose up --wait` can wait for.

    `--wait` counts a one-shot container that exited 0 as a failure unless a service it starts waits
    for it with `service_completed_successfully` (docker/compose#10596); so the wait set is every
    long-running service plus the adopted one-shots, and the others are run on their own after it.
    """
    adopted = adopted_one_shots(services)
    return sorted(name for name, service in services.items() if not is_one_shot(service) or name in adopted)


def missing_topics(listed: Iterable[str]) -> list[str]:
    present = {line.strip() for line in listed}
    return [topic for topic in ALL_TOPICS if topic not in present]


def poll(check: Callable[[], T | None], deadline_s: float, interval_s: float, what: str) -> T:
    """Call `check` until it returns a value; SystemExit with `what` at the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() >= end:
            raise SystemExit(f"timed out after {deadline_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def http_json(method: str, url: str, body: dict[str, Any] | None = None, timeout_s: float = 10) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def check_flink_job(
    flink_url: str, deadline_s: float, interval_s: float = 5, parallelism: int = 1, taskmanagers: int = 1
) -> None:
    """Poll until the score job is RUNNING with every vertex at `parallelism` over `taskmanagers`."""

    def running() -> str | None:
        try:
            job = score_job(list_jobs(flink_url))
            state = str(job["state"]) if job else MISSING
            spread = job_spread(flink_url, job["jid"]) if job and state == "RUNNING" else None
        except (OSError, ValueError, KeyError) as err:  # not up yet, or an answer of a job being replaced
            print(f"flink: {err}")
            return None
        print(f"flink: {SCORE_JOB_NAME!r} is {state}" + (f", {spread}" if spread else ""))
        return state if spread is not None and spread.spans(parallelism, taskmanagers) else None

    what = f"{SCORE_JOB_NAME!r} to be RUNNING at parallelism {parallelism} on {taskmanagers} TaskManager(s)"
    poll(running, deadline_s, interval_s, what)


def send_seed_question(
    storage_url: str, deadline_s: float, require_scored: bool, interval_s: float = 5
) -> dict[str, Any]:
    code, body = http_json("POST", f"{storage_url}/query", SEED_EXAMPLE, timeout_s=30)
    print(f"POST /query -> {code} {body}")
    if code not in (200, 202):
        raise SystemExit(f"POST /query answered {code}")
    question_id = body["question_id"]

    def terminal() -> dict[str, Any] | None:
        try:
            code, status = http_json("GET", f"{storage_url}/status/{question_id}")
        except OSError as err:
            print(f"GET /status: {err}")
            return None
        print(f"GET /status/{question_id} -> {code} {status.get('status') if isinstance(status, dict) else status}")
        return status if code == 200 and status.get("status") in TERMINAL else None

    final = poll(terminal, deadline_s, interval_s, "the seed question to reach a terminal status")
    print(json.dumps(final, indent=2, ensure_ascii=False))
    if require_scored and final["status"] not in SCORED:
        raise SystemExit(f"the seed question ended {final['status']}, not scored by the Flink job")
    return final


def targets_down(active_targets: list[dict[str, Any]]) -> list[str]:
    """The scrape targets Prometheus does not see up, as `job/instance (error)`."""
    return [
        f"{t['labels'].get('job')}/{t['labels'].get('instance')} ({t.get('lastError') or t.get('health')})"
        for t in active_targets
        if t.get("health") != "up"
    ]


def check_prometheus_targets(prometheus_url: str, deadline_s: float, interval_s: float = 5) -> None:
    """Every target of observability/prometheus.yml is scraped successfully (up == 1)."""

    def all_up() -> int | None:
        try:
            code, body = http_json("GET", f"{prometheus_url}/api/v1/targets?state=active")
        except OSError as err:
            print(f"prometheus: {err}")
            return None
        targets = body["data"]["activeTargets"] if code == 200 else []
        down = targets_down(targets)
        print(f"prometheus: {len(targets) - len(down)}/{len(targets)} targets up" + (f"; down: {down}" if down else ""))
        return len(targets) if targets and not down else None

    poll(all_up, deadline_s, interval_s, "every Prometheus target to be up")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("wait-set", help="read `docker compose config --format json`; print the --wait services")
    commands.add_parser("topics", help="read a topic list; fail if a topic of common.topics is missing")
    flink = commands.add_parser("flink-job", help="poll the Flink REST API until the score job is RUNNING")
    flink.add_argument("--flink-url", default="http://localhost:8081")
    flink.add_argument("--deadline", type=float, default=300)
    flink.add_argument("--parallelism", type=int, default=1, help="every vertex at this parallelism")
    flink.add_argument("--taskmanagers", type=int, default=1, help="its subtasks spread over this many")
    seed = commands.add_parser("seed-question", help="POST the README's example, poll /status to a terminal one")
    seed.add_argument("--storage-url", default="http://localhost:5001")
    seed.add_argument("--deadline", type=float, default=600)
    seed.add_argument("--require-scored", action="store_true", help="fail unless validated or low_quality")
    prometheus = commands.add_parser("prometheus-targets", help="poll Prometheus until every scrape target is up")
    prometheus.add_argument("--prometheus-url", default="http://localhost:9090")
    prometheus.add_argument("--deadline", type=float, default=180)
    args = parser.parse_args(argv)

    if args.command == "wait-set":
        print("\n".join(wait_set(json.load(sys.stdin)["services"])))
    elif args.command == "topics":
        missing = missing_topics(sys.stdin)
        if missing:
            raise SystemExit(f"missing topics: {missing}")
        print(f"all {len(ALL_TOPICS)} topics exist")
    elif args.command == "flink-job":
        check_flink_job(args.flink_url, args.deadline, parallelism=args.parallelism, taskmanagers=args.taskmanagers)
    elif args.command == "prometheus-targets":
        check_prometheus_targets(args.prometheus_url, args.deadline)
    else:
        send_seed_question(args.storage_url, args.deadline, args.require_scored)
    return 0


if __name__ == "__main__":
    sys.exit(main())
