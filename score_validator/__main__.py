"""python -m score_validator serve | backup-consumer"""

from __future__ import annotations

import argparse

from common.logging import configure_logging
from common.web import serve
from score_validator.config import ScoreValidatorSettings


def main() -> None:
    parser = argparse.ArgumentParser(prog="score_validator")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "backup-consumer"])
    args = parser.parse_args()
    settings = ScoreValidatorSettings()
    configure_logging("score-validator", settings.log_level)
    if args.command == "backup-consumer":
        from score_validator.backup import run_backup_consumer

        run_backup_consumer(settings)
        return

    def app_factory():
        from score_validator.app import create_app
        from score_validator.scorer import Scorer

        return create_app(settings, Scorer(settings))

    serve(
        app_factory, settings.score_validator_port, bind_host=settings.bind_host, threads=settings.scorer_http_threads
    )


if __name__ == "__main__":
    main()
