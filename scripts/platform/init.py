"""First-start initialisation, and what every start re-applies: Kafka's storage, the PostgreSQL
cluster and its passwords, the application's role, database and schema, the topics."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

from scripts.platform.config import kafka_classpath, postgres_bin, write_kafka_config, write_pg_hba
from scripts.platform.health import postgres_superuser
from scripts.platform.layout import ROOT, Layout, log, running_as_root


def initialise_storage(layout: Layout) -> None:
    """Before any process starts: Kafka's storage formatted and the PostgreSQL cluster created on
    first start; PostgreSQL's passwords and pg_hba.conf checked at every start."""
    format_kafka_storage(layout, kafka_classpath(), write_kafka_config(layout))
    init_postgres_cluster(layout)


def make_reachable_for(user: str, path: Path) -> None:
    """PostgreSQL refuses to run as root, so its data folder must be reachable by `user`."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            log(f"allowing {user} to traverse {parent} (PostgreSQL runs as {user})")
            parent.chmod(mode | 0o001)


def format_kafka_storage(layout: Layout, classpath: str, conf: Path) -> None:
    if (layout.path("kafka", "data", "meta.properties")).exists():
        return
    log("formatting Kafka storage (first start)")
    cluster_id = subprocess.run(
        ["java", "-cp", classpath, "kafka.tools.StorageTool", "random-uuid"], check=True, capture_output=True, text=True
    ).stdout.split()[-1]
    subprocess.run(
        ["java", "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(conf)],
        check=True,
        capture_output=True,
        text=True,
    )


def as_postgres_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if running_as_root() else cmd


def init_postgres_cluster(layout: Layout) -> None:
    """Create the cluster on first start; on every start, make it password-only (SCRAM).

    The superuser's password is generated once per stack (<stack>/secrets/postgres-superuser).
    It is set in single-user mode, before the server starts, whenever the cluster is new or the
    secret is (an existing cluster from before passwords, initialised with `trust`).
    """
    data = layout.path("postgres", "data")
    fresh = not (data / "PG_VERSION").exists()
    if fresh:
        log("initialising the PostgreSQL cluster (first start)")
        data.mkdir(parents=True, exist_ok=True)
        if running_as_root():
            make_reachable_for("postgres", data)
            shutil.chown(layout.path("postgres"), "postgres", "postgres")
            shutil.chown(data, "postgres", "postgres")
        # `trust` only until pg_hba.conf is rewritten below, before the server ever runs.
        cmd = [str(postgres_bin() / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
        subprocess.run(
            as_postgres_user([*cmd, "-E", "UTF8", "--locale=C.UTF-8"]), check=True, capture_output=True, text=True
        )
    new_secret = not layout.path("secrets", "postgres-superuser").exists()
    if fresh or new_secret:
        if not fresh:
            log("PostgreSQL: setting a superuser password and password authentication (was: trust)")
        set_postgres_superuser_password(layout, data)
    write_pg_hba(data, layout.bind_host)


def set_postgres_superuser_password(layout: Layout, data: Path) -> None:
    """ALTER ROLE in single-user mode: no server runs, so no connection (nor `trust`) is needed."""
    password = layout.postgres_superuser_password.replace("'", "''")
    single_user = [str(postgres_bin() / "postgres"), "--single", "-D", str(data), "-c", "exit_on_error=on", "postgres"]
    result = subprocess.run(
        as_postgres_user(single_user),
        input=f"ALTER ROLE postgres WITH PASSWORD '{password}';\n",
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        layout.path("secrets", "postgres-superuser").unlink(missing_ok=True)  # so the next start retries
        raise SystemExit(f"[stack] could not set the PostgreSQL superuser password: {result.stderr[-2000:]}")


def init_database(layout: Layout) -> None:
    """Create the role and database named in DATABASE_URL, then apply postgres/schema.sql.

    The role's password is set from DATABASE_URL at every start: a changed DATABASE_URL takes
    effect, and a role created before password authentication gets a SCRAM hash.
    """
    import psycopg
    from psycopg import sql

    url = urlparse(layout.database_url)
    user = unquote(url.username or "yahoo")
    password = unquote(url.password or "yahoo")
    dbname = url.path.lstrip("/") or "yahoo_llm"
    with psycopg.connect(**postgres_superuser(layout), autocommit=True) as conn:
        verb = "ALTER" if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone() else "CREATE"
        conn.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(user), sql.Literal(password)))
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname), sql.Identifier(user)))
    with psycopg.connect(layout.database_url, autocommit=True) as conn:
        conn.execute((ROOT / "postgres" / "schema.sql").read_text())


def init_topics(layout: Layout) -> None:
    from common.kafka import ensure_topics, grow_partitions

    partitions = layout.settings.kafka_partitions
    created = ensure_topics(layout.kafka_bootstrap, partitions=partitions)
    log(f"topics: created {', '.join(created)}" if created else "topics: all present")
    grown = grow_partitions(layout.kafka_bootstrap, partitions=partitions)
    if grown:
        log(f"topics: grown to {partitions} partitions (KAFKA_PARTITIONS): {', '.join(grown)}")
