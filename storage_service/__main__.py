"""python -m storage_service serve | consume"""

from __future__ import annotations

import argparse

from common.logging import configure_logging
from common.web import serve
from storage_service.config import StorageSettings


def main() -> None:
    parser = argparse.ArgumentParser(prog="storage_service")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "consume"])
    args = parser.parse_args()
    settings = StorageSettings()
    configure_logging("storage-service" if args.command == "serve" else "storage-consumer", settings.log_level)
    if args.command == "consume":
        from storage_service.consumer import run

        run(settings)
        return

    def app_factory():
        from common.kafka import ConfirmedProducer
        from storage_service.app import create_app
        from storage_service.cache import AnswerCache
        from storage_service.repository import Repository

        repo = Repository(settings.database_url, settings.db_pool_size)
        repo.open()
        return create_app(
            settings,
            repo,
            AnswerCache(settings.redis_url, settings.cache_ttl_s),
            ConfirmedProducer(
                settings.kafka_bootstrap_servers, "storage-service", message_timeout_s=settings.kafka_produce_timeout_s
            ),
        )

    serve(app_factory, settings.storage_port, bind_host=settings.bind_host, threads=16, timeout_s=60)


if __name__ == "__main__":
    main()
