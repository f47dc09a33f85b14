"""python -m common init-topics   (the init step: creates every topic of DESIGN.md, waits for Kafka)"""

from __future__ import annotations

import argparse
import time

from confluent_kafka import KafkaException

from common.kafka import ensure_topics
from common.logging import configure_logging
from common.settings import ServiceSettings


def main() -> None:
    parser = argparse.ArgumentParser(prog="common")
    parser.add_argument("command", choices=["init-topics"])
    parser.add_argument("--wait-s", type=float, default=120)
    args = parser.parse_args()
    settings = ServiceSettings()
    log = configure_logging("init-topics", settings.log_level)
    deadline = time.monotonic() + args.wait_s
    while True:
        try:
            created = ensure_topics(settings.kafka_bootstrap_servers)
            log.info("topics ready", extra={"created": created})
            return
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"Kafka at {settings.kafka_bootstrap_servers} not reachable: {exc}") from exc
            time.sleep(2)


if __name__ == "__main__":
    main()
