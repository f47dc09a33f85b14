"""python -m storage_service serve | consume"""

from __future__ import annotations

import argparse
import atexit
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from common.logging import configure_logging
from common.web import serve
from storage_service.config import StorageSettings

if TYPE_CHECKING:
    from storage_service.repository import Repository

SCHEMA_SQL = Path(__file__).resolve().parent.parent / "postgres" / "schema.sql"
log = logging.getLogger(__name__)


def upgrade_schema(repo: Repository) -> None:
    """Bring an existing database up to postgres/schema.sql when a column is missing (a Docker volume
    created before it: the container's init script never runs again; natively `make up` applies it).
    A database that cannot be asked is an outage the API already handles; one that is older and
    cannot be upgraded ends the process, so that supervisord or compose starts it again, instead of
    answering /metrics with a 503 for the missing column for as long as it runs."""
    try:
        current = repo.schema_is_current()
    except Exception as exc:  # noqa: BLE001 - PostgreSQL away at start: /health says so
        log.warning("could not check the database schema", extra={"error": str(exc)})
        return
    if current or not SCHEMA_SQL.exists():
        return
    try:
        repo.apply_schema(SCHEMA_SQL.read_text())
    except Exception as exc:  # any failure: start again later
        raise SystemExit(
            f"the database schema is older than postgres/schema.sql and could not be upgraded: {exc}"
        ) from exc
    log.info("applied postgres/schema.sql to an older database")


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
        upgrade_schema(repo)
        app = create_app(
            settings,
            repo,
            AnswerCache(settings.redis_url, settings.cache_ttl_s),
            ConfirmedProducer(
                settings.kafka_bootstrap_servers, "storage-service", message_timeout_s=settings.kafka_produce_timeout_s
            ),
        )
        atexit.register(app.extensions["access_recorder"].close)  # write the last accesses on shutdown
        return app

    serve(app_factory, settings.storage_port, bind_host=settings.bind_host, threads=16, timeout_s=60)


if __name__ == "__main__":
    main()
