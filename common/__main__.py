"""python -m common COMMAND

init-topics          the init step: creates every topic of DESIGN.md, waits for Kafka
replay-dead-letter   re-publishes dead-lettered messages that still parse to their source topic
                     [--question-id ID] [--since ISO] [--dry-run]
rerun QUESTION_ID    starts a new run of a failed, low-quality or stale pending question
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from confluent_kafka import KafkaException

from common.kafka import ensure_topics, grow_partitions
from common.logging import configure_logging
from common.operations import (
    Progress,
    ReplayFilter,
    parse_since,
    post_query,
    replay_dead_letters,
    rerun_outcome,
    stored_question,
)
from common.settings import ServiceSettings


def init_topics(settings: ServiceSettings, wait_s: float) -> None:
    log = configure_logging("init-topics", settings.log_level)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            created = ensure_topics(settings.kafka_bootstrap_servers, partitions=settings.kafka_partitions)
            grown = grow_partitions(settings.kafka_bootstrap_servers, partitions=settings.kafka_partitions)
            log.info(
                "topics ready", extra={"created": created, "grown": grown, "partitions": settings.kafka_partitions}
            )
            return
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"Kafka at {settings.kafka_bootstrap_servers} not reachable: {exc}") from exc
            time.sleep(2)


def replay(settings: ServiceSettings, args: argparse.Namespace) -> None:
    """Reopens each question a dead letter ended and re-publishes its original message (see
    common.operations.question_allows_replay for what is skipped), reading the topic only up to the
    end offsets seen at the start."""
    wanted = ReplayFilter(args.question_id, args.since)
    report = replay_dead_letters(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        database_url=settings.database_url,
        wanted=wanted,
        dry_run=args.dry_run,
        progress=Progress(),
    )
    print("\n".join(report.lines(args.dry_run)))
    if report.stopped:
        raise SystemExit(1)


def rerun(settings: ServiceSettings, question_id: str) -> None:
    """Asks the question again through POST /query: the one path that starts a run, atomically with
    its publish (rolled back if Kafka refuses), under the row lock that keeps two askers from
    forking it, with the same rules (stale pending, cache) as any client. The database is read only
    for the stored text and reference answer, which GET /status does not return."""
    before = stored_question(settings.database_url, question_id)
    if before is None:
        raise SystemExit(f"no question with id {question_id}")
    print(f"{question_id}: {before.status.value} in run {before.run}; asking storage_service again", file=sys.stderr)
    http_status, body = post_query(settings.storage_url, before)
    started, text = rerun_outcome(before, stored_question(settings.database_url, question_id), http_status, body)
    print(text)
    if not started and http_status != 200:  # 200: validated, nothing to do
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m common", description=(__doc__ or "").split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init-topics", help="create every topic, waiting for Kafka")
    init.add_argument("--wait-s", type=float, default=120)
    replay_cmd = commands.add_parser("replay-dead-letter", help="re-publish dead-lettered messages that still parse")
    replay_cmd.add_argument("--question-id", help="only this question's dead letters")
    replay_cmd.add_argument(
        "--since", type=parse_since, help="only dead letters from this ISO 8601 time on (UTC if no zone)"
    )
    replay_cmd.add_argument("--dry-run", action="store_true", help="report what would be replayed; change nothing")
    rerun_cmd = commands.add_parser("rerun", help="start a new run of a failed, low-quality or stale pending question")
    rerun_cmd.add_argument("question_id")
    args = parser.parse_args(argv)

    # The operator commands also reach storage_service over HTTP (STORAGE_URL, as the traffic generator).
    settings = ServiceSettings()
    if args.command == "init-topics":
        init_topics(settings, args.wait_s)
        return
    # The report goes to stdout; progress and warnings to stderr, as plain text for a person.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "replay-dead-letter":
        replay(settings, args)
    else:
        rerun(settings, args.question_id)


if __name__ == "__main__":
    main()
