"""The native stack: the twin of docker-compose.yml, run as local processes under supervisord.

    python scripts/stack.py up [--platform-only]   start (or complete) the stack, wait until healthy
    python scripts/stack.py down                   stop everything `up` started; data stays
    python scripts/stack.py status                 what runs, and where

Every process inherits the caller's environment, so the variables of DESIGN.md configure both
modes alike. State (data, logs, generated configs) lives in $YAHOO_LLM_STATE_DIR/<stack name>.
"""

from __future__ import annotations

import argparse
import glob
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STATE = Path(os.environ.get("YAHOO_LLM_STATE_DIR", ROOT / ".state"))
VENV = STATE / "venv"
PYTHON = VENV / "bin" / "python"


def log(message: str) -> None:
    print(f"[stack] {message}", flush=True)


def read_versions() -> dict[str, str]:
    versions = {}
    for line in (ROOT / ".env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            versions[key.strip()] = value.strip()
    return versions


def url_host(host: str) -> str:
    """A host as it appears in a URL or a listener (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host else host


def with_password(url: str, password: str) -> str:
    """`url` carrying `password` (percent-encoded), unless it already carries one."""
    parsed = urlparse(url)
    if parsed.password is not None:
        return url
    user = quote(unquote(parsed.username or ""), safe="")
    netloc = f"{user}:{quote(password, safe='')}@{parsed.netloc.rsplit('@', 1)[-1]}"
    return parsed._replace(netloc=netloc).geturl()


def masked(url: str) -> str:
    """`url` with its password hidden, for printing."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)).geturl()


@dataclass(frozen=True)
class Layout:
    """Where one stack keeps its state, and the ports it listens on (from the environment)."""

    name: str
    env: dict

    @property
    def home(self) -> Path:
        return STATE / self.name

    def path(self, *parts: str) -> Path:
        return self.home.joinpath(*parts)

    def secret(self, name: str) -> str:
        """A password generated once per stack, kept 0600 in <stack>/secrets/<name>."""
        folder = self.path("secrets")
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        file = folder / name
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return file.read_text().strip()
        value = secrets.token_urlsafe(24)  # letters, digits, '-' and '_': safe in URLs and configs
        with os.fdopen(fd, "w") as out:
            out.write(value + "\n")
        return value

    @property
    def bind_host(self) -> str:
        """Where every port of the stack listens: loopback unless BIND_HOST says otherwise."""
        from common.web import WebSettings

        return self.env.get("BIND_HOST") or WebSettings.model_fields["bind_host"].default

    @property
    def llm_timeout_s(self) -> float:
        from llm_consumer.config import LLMConsumerSettings

        return float(self.env.get("LLM_TIMEOUT_S") or LLMConsumerSettings.model_fields["llm_timeout_s"].default)

    @property
    def postgres_superuser_password(self) -> str:
        return self.secret("postgres-superuser")

    @property
    def kafka_port(self) -> int:
        first = self.env.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092").split(",")[0]
        return int(first.rsplit(":", 1)[1])

    @property
    def kafka_bootstrap(self) -> str:
        return f"localhost:{self.kafka_port}"

    @property
    def database_url(self) -> str:
        return self.env.get("DATABASE_URL") or "postgresql://yahoo:yahoo@localhost:5432/yahoo_llm"

    @property
    def redis_port(self) -> int:
        return urlparse(self.env.get("REDIS_URL") or "redis://localhost:6379/0").port or 6379

    @property
    def redis_password(self) -> str:
        """The password in REDIS_URL, else REDIS_PASSWORD, else one generated for this stack."""
        in_url = urlparse(self.env.get("REDIS_URL") or "").password
        return unquote(in_url) if in_url else self.env.get("REDIS_PASSWORD") or self.secret("redis")

    @property
    def redis_url(self) -> str:
        """REDIS_URL as every process gets it: with the password."""
        return with_password(self.env.get("REDIS_URL") or "redis://localhost:6379/0", self.redis_password)

    @property
    def flink_rest_port(self) -> int:
        return int(self.env.get("FLINK_REST_PORT", "8081"))

    @property
    def storage_port(self) -> int:
        return int(self.env.get("STORAGE_PORT", "5001"))

    @property
    def scorer_port(self) -> int:
        return int(self.env.get("SCORE_VALIDATOR_PORT", "8000"))

    @property
    def score_validator_url(self) -> str:
        return self.env.get("SCORE_VALIDATOR_URL") or f"http://localhost:{self.scorer_port}"

    @property
    def kafka_ui_port(self) -> int:
        return int(self.env.get("KAFKA_UI_PORT", "8080"))

    @property
    def ollama_url(self) -> str:
        return (self.env.get("OLLAMA_URL") or "http://localhost:11434").rstrip("/")

    def ports(self) -> dict[str, int]:
        db = urlparse(self.database_url)
        return {
            "kafka": self.kafka_port,
            "kafka-controller": self.kafka_port + 1,
            "postgres": db.port or 5432,
            "redis": self.redis_port,
            "flink-rest": self.flink_rest_port,
            "storage-service": self.storage_port,
            "score-validator": self.scorer_port,
            "kafka-ui": self.kafka_ui_port,
        }


# ---------------------------------------------------------------------------------------------
# Small waiting helpers: poll with a deadline, never a bare sleep.


def wait_for(what: str, check, timeout_s: float, interval_s: float = 0.5, layout: Layout | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last_error = "not ready"
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(interval_s)
    hint = f"; logs: {layout.path('logs')}" if layout else ""
    raise SystemExit(f"[stack] {what} not ready after {timeout_s:.0f}s ({last_error}){hint}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def http_json(url: str, timeout_s: float = 3.0):
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return json.loads(resp.read())


# ---------------------------------------------------------------------------------------------
# Configuration files generated into the stack's folder.


def pyflink_home() -> Path:
    out = subprocess.run(
        [str(PYTHON), "-c", "import os, pyflink; print(os.path.dirname(pyflink.__file__))"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise SystemExit("[stack] PostgreSQL is not installed; run scripts/install.sh")
    return Path(found[-1]).parent


def running_as_root() -> bool:
    return os.geteuid() == 0


def make_reachable_for(user: str, path: Path) -> None:
    """PostgreSQL refuses to run as root, so its data folder must be reachable by `user`."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            log(f"allowing {user} to traverse {parent} (PostgreSQL runs as {user})")
            parent.chmod(mode | 0o001)


def write_kafka_config(layout: Layout) -> Path:
    conf = layout.path("kafka", "server.properties")
    conf.parent.mkdir(parents=True, exist_ok=True)
    port = layout.kafka_port
    conf.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@localhost:{port + 1}",
                # Clients on BIND_HOST; the controller only ever talks to this broker: loopback.
                f"listeners=PLAINTEXT://{url_host(layout.bind_host)}:{port},CONTROLLER://localhost:{port + 1}",
                f"advertised.listeners=PLAINTEXT://localhost:{port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={layout.path('kafka', 'data')}",
                "auto.create.topics.enable=false",
                "num.partitions=3",
                "offsets.topic.replication.factor=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.hours=168",
                "",
            ]
        )
    )
    return conf


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


def pg_hba_lines(bind_host: str) -> list[str]:
    """Password (SCRAM) authentication for every connection, never `trust`; from other hosts only
    when BIND_HOST opens the port beyond loopback."""
    lines = [
        "# Written by scripts/stack.py at every start: passwords only (SCRAM), never trust.",
        "# TYPE  DATABASE  USER  ADDRESS       METHOD",
        "local   all       all                 scram-sha-256",
        "host    all       all   127.0.0.1/32  scram-sha-256",
        "host    all       all   ::1/128       scram-sha-256",
    ]
    if bind_host not in {"127.0.0.1", "localhost", "::1"}:
        lines += [
            "host    all       all   0.0.0.0/0     scram-sha-256",
            "host    all       all   ::/0          scram-sha-256",
        ]
    return [*lines, ""]


def write_pg_hba(data: Path, bind_host: str) -> None:
    hba = data / "pg_hba.conf"
    hba.write_text("\n".join(pg_hba_lines(bind_host)))
    hba.chmod(0o600)
    if running_as_root():
        shutil.chown(hba, "postgres", "postgres")


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_bind_preload(layout: Layout) -> dict:
    """LD_PRELOAD for the Flink processes: scripts/platform/loopback_bind.c, which turns their
    wildcard binds (Beam's Fn API servers for the Python workers) into loopback ones. Built once per
    stack with the system's C compiler; nothing when BIND_HOST is not loopback."""
    if not is_loopback(layout.bind_host):
        return {}
    source = ROOT / "scripts" / "platform" / "loopback_bind.c"
    built = layout.path("flink", "loopback_bind.so")
    if not built.exists() or built.stat().st_mtime < source.stat().st_mtime:
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            log("no C compiler (scripts/install.sh installs gcc): the Flink Python workers' ports stay on 0.0.0.0")
            return {}
        built.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-o", str(built), str(source), "-ldl"],
            check=True,
            capture_output=True,
            text=True,
        )
    return {"LD_PRELOAD": built}


def write_flink_config(layout: Layout) -> Path:
    import yaml  # from the venv (PyYAML is a dependency of the platform tools)

    conf_dir = layout.path("flink", "conf")
    conf_dir.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load((pyflink_home() / "conf" / "config.yaml").read_text())
    java_opts = base["env"]["java"]["opts"]["all"]  # the --add-opens block Java 17 needs
    flink = layout.path("flink")
    config = {
        "env.java.opts.all": java_opts,
        "env.pid.dir": str(flink / "run"),
        "env.log.dir": str(layout.path("logs")),
        # Internal ports (RPC, blob server, data exchange) on loopback; the REST API on BIND_HOST.
        "jobmanager.bind-host": "127.0.0.1",
        "jobmanager.rpc.address": "localhost",
        "jobmanager.rpc.port": 6123,
        "jobmanager.memory.process.size": "1024m",
        "jobmanager.execution.failover-strategy": "region",
        "taskmanager.bind-host": "127.0.0.1",
        "taskmanager.host": "localhost",
        "taskmanager.numberOfTaskSlots": 2,
        "taskmanager.memory.process.size": "2048m",
        # Python workers allocate direct buffers; without this they die with "Direct buffer memory".
        "taskmanager.memory.task.off-heap.size": "256m",
        "parallelism.default": 1,
        "rest.address": "localhost",
        "rest.bind-address": layout.bind_host,
        "rest.port": layout.flink_rest_port,
        "python.executable": str(PYTHON),
        "python.client.executable": str(PYTHON),
        "io.tmp.dirs": str(flink / "tmp"),
        "web.tmpdir": str(flink / "web"),
        "web.upload.dir": str(flink / "web"),
        "blob.storage.directory": str(flink / "blob"),
        "execution.checkpointing.dir": f"file://{flink / 'checkpoints'}",
        "restart-strategy.type": "exponential-delay",
        "restart-strategy.exponential-delay.initial-backoff": "2 s",
        "restart-strategy.exponential-delay.max-backoff": "60 s",
        "restart-strategy.exponential-delay.attempts-before-reset-backoff": 1000000,
    }
    for sub in ("run", "tmp", "web", "blob", "checkpoints"):
        (flink / sub).mkdir(parents=True, exist_ok=True)
    (conf_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    (conf_dir / "log4j-console.properties").write_text(
        "\n".join(
            [
                "rootLogger.level = INFO",
                "rootLogger.appenderRef.console.ref = ConsoleAppender",
                "appender.console.name = ConsoleAppender",
                "appender.console.type = CONSOLE",
                "appender.console.layout.type = PatternLayout",
                "appender.console.layout.pattern = %d{yyyy-MM-dd HH:mm:ss,SSS} %-5p %-60c %x - %m%n",
                "logger.kafka.name = org.apache.kafka",
                "logger.kafka.level = WARN",
                "",
            ]
        )
    )
    shutil.copy(pyflink_home() / "conf" / "log4j-cli.properties", conf_dir / "log4j-cli.properties")
    return conf_dir


# ---------------------------------------------------------------------------------------------
# supervisord: one program per process, in two groups started in order.


def literal(value: object) -> str:
    """`value` as supervisord must read it: it expands `%(name)s` in commands, paths and
    environment values, so a `%` of ours (a URL-encoded password) is written `%%`."""
    return str(value).replace("%", "%%")


def environment_line(environment: dict) -> str:
    """KEY="value",... as supervisord parses it (shlex, without escapes: a `"` cannot be carried)."""
    pairs = []
    for key, value in environment.items():
        text = literal(value)
        if '"' in text or "\n" in text:
            raise SystemExit(f"[stack] {key} contains a double quote or a newline, which supervisord cannot pass on")
        pairs.append(f'{key}="{text}"')
    return "environment=" + ",".join(pairs)


def program(
    name: str,
    command: str,
    layout: Layout,
    *,
    environment: dict | None = None,
    user: str | None = None,
    numprocs: int = 1,
    stopsignal: str = "TERM",
    stopwaitsecs: int | None = None,
    directory: Path = ROOT,
) -> str:
    """One [program:x] section. The stop grace defaults to stop_grace_s(name); the priority makes
    supervisord's own shutdown follow STOP_TIERS too."""
    lines = [
        f"[program:{name}]",
        f"command={literal(command)}",
        f"directory={literal(directory)}",
        "autostart=false",
        "autorestart=true",
        "startsecs=3",
        "startretries=5",
        f"priority={stop_priority(name)}",
        f"stopsignal={stopsignal}",
        f"stopwaitsecs={stopwaitsecs if stopwaitsecs is not None else stop_grace_s(name, layout)}",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        "stdout_logfile_maxbytes=20MB",
        "stdout_logfile_backups=2",
    ]
    if numprocs > 1:
        lines += [
            f"numprocs={numprocs}",
            "process_name=%(program_name)s-%(process_num)d",
            f"stdout_logfile={literal(layout.path('logs'))}/%(program_name)s-%(process_num)d.log",
        ]
    else:
        lines.append(f"stdout_logfile={literal(layout.path('logs', name + '.log'))}")
    if user:
        lines.append(f"user={user}")
    if environment:
        lines.append(environment_line(environment))
    return "\n".join(lines) + "\n"


PLATFORM = ["kafka", "postgres", "redis", "flink-jobmanager", "flink-taskmanager"]
SERVICES = [
    "score-validator",
    "storage-service",
    "storage-consumer",
    "llm-consumer",
    "retry-overload-consumer",
    "retry-quota-consumer",
    "kafka-ui",
]
EMBEDDED_LLM = "local-llm"
BACKUP_SCORER = "score-validator-backup"  # started only with SCORE_VALIDATOR_BACKUP_CONSUMER=true
EMBEDDED_MODEL_NAME = "smollm2:135m"

# `make down` stops one tier at a time, every process of a tier at once: first what consumes and
# serves (so consumers finish the message in hand, flush and commit while Kafka and PostgreSQL are
# still there), the platform last. Tier 0 is every program not named below: the API, the
# consumers, the Flink job watchdog, the Kafka browser.
STOP_TIERS: list[set[str]] = [
    set(),
    {EMBEDDED_LLM},  # after the LLM consumers, which may be waiting on it
    {"flink-jobmanager", "flink-taskmanager"},
    {"score-validator"},  # after the Flink job, its client
    {"kafka"},
    {"postgres", "redis"},
]
# An LLM consumer may be in a call of up to LLM_TIMEOUT_S when asked to stop; it then produces,
# flushes and commits. Consumers get that long plus this margin before supervisord kills them.
CONSUMERS = {"storage-consumer", "llm-consumer", "retry-overload-consumer", "retry-quota-consumer", BACKUP_SCORER}
CONSUMER_STOP_MARGIN_S = 30
DEFAULT_STOP_GRACE_S = 30


def stop_tier(name: str) -> int:
    """The tier of a program ('llm-consumer') or of one of its processes ('llm-consumer:llm-consumer-0')."""
    program_name = name.split(":", 1)[0]
    return next((i for i, names in enumerate(STOP_TIERS) if program_name in names), 0)


def stop_priority(name: str) -> int:
    """supervisord stops higher priorities first (and starts them last)."""
    return 900 - 100 * stop_tier(name)


def stop_plan(names: list[str]) -> list[list[str]]:
    """`names` grouped into the tiers they stop in, first tier first, empty tiers left out."""
    tiers: list[list[str]] = [[] for _ in STOP_TIERS]
    for name in names:
        tiers[stop_tier(name)].append(name)
    return [sorted(tier) for tier in tiers if tier]


def stop_grace_s(name: str, layout: Layout) -> int:
    if name in CONSUMERS:
        return int(layout.llm_timeout_s) + CONSUMER_STOP_MARGIN_S
    return DEFAULT_STOP_GRACE_S


def write_supervisor_config(layout: Layout, embedded_llm: bool) -> Path:
    versions = read_versions()
    kafka_jars = STATE / "jars" / f"kafka-{versions['KAFKA_VERSION']}"
    kafka_conf = write_kafka_config(layout)
    classpath = f"{kafka_jars}/*"
    format_kafka_storage(layout, classpath, kafka_conf)
    init_postgres_cluster(layout)
    flink_conf = write_flink_config(layout)
    flink_bin = pyflink_home() / "bin"
    loopback_only = loopback_bind_preload(layout)
    db = urlparse(layout.database_url)
    pg_socket_dir = layout.path("postgres", "run")
    pg_socket_dir.mkdir(parents=True, exist_ok=True)
    if running_as_root():
        shutil.chown(pg_socket_dir, "postgres", "postgres")
    layout.path("redis").mkdir(parents=True, exist_ok=True)
    redis_secrets = write_redis_secrets(layout)
    flink_env = {
        "FLINK_CONF_DIR": flink_conf,
        "FLINK_LOG_DIR": layout.path("logs"),
        "FLINK_PID_DIR": layout.path("flink", "run"),
        "MAX_LOG_FILE_NUMBER": 2,
    }
    service_env = {
        "PYTHONPATH": ROOT,
        "PYTHONUNBUFFERED": 1,
        "HF_HUB_OFFLINE": 1,
        "KAFKA_BOOTSTRAP_SERVERS": layout.kafka_bootstrap,
        "DATABASE_URL": layout.database_url,
        "REDIS_URL": layout.redis_url,
        "OLLAMA_URL": layout.ollama_url,
        "YAHOO_LLM_STATE_DIR": STATE,
        "BIND_HOST": layout.bind_host,
    }
    marker = layout.path("run", "embedded-llm")
    marker.unlink(missing_ok=True)
    if embedded_llm:
        marker.touch()
        if not layout.env.get("LLM_MODEL"):
            service_env["LLM_MODEL"] = EMBEDDED_MODEL_NAME
    py = str(PYTHON)
    sections = [
        "[unix_http_server]",
        f"file={layout.path('run', 'supervisor.sock')}",
        "",
        "[supervisord]",
        f"logfile={layout.path('logs', 'supervisord.log')}",
        f"pidfile={layout.path('run', 'supervisord.pid')}",
        f"childlogdir={layout.path('logs')}",
        "logfile_maxbytes=10MB",
        "logfile_backups=2",
        "user=root" if running_as_root() else "",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{layout.path('run', 'supervisor.sock')}",
        "",
        program(
            "kafka",
            f"java -Xms256m -Xmx768m -XX:+UseG1GC -Dlog4j2.configurationFile={ROOT}/scripts/platform/kafka-log4j2.yaml "
            f"-cp '{classpath}' kafka.Kafka {kafka_conf}",
            layout,
            stopwaitsecs=60,
        ),
        program(
            "postgres",
            f"{postgres_bin() / 'postgres'} -D {layout.path('postgres', 'data')} -p {db.port or 5432} "
            f"-c listen_addresses={layout.bind_host} -c unix_socket_directories={pg_socket_dir} "
            "-c max_connections=100 -c password_encryption=scram-sha-256",
            layout,
            user="postgres" if running_as_root() else None,
            stopsignal="INT",
            stopwaitsecs=60,
        ),
        program(
            "redis",
            f"redis-server {ROOT}/redis/redis.conf --port {layout.redis_port} --bind {layout.bind_host} "
            f"--include {redis_secrets} "
            f"--dir {layout.path('redis')} --maxmemory {layout.env.get('REDIS_MAXMEMORY', '128mb')} "
            f"--maxmemory-policy {layout.env.get('REDIS_MAXMEMORY_POLICY', 'allkeys-lru')}",
            layout,
        ),
        program(
            "flink-jobmanager",
            f"{flink_bin}/jobmanager.sh start-foreground",
            layout,
            environment={**flink_env, **loopback_only},
            stopwaitsecs=60,
        ),
        program(
            "flink-taskmanager",
            f"{flink_bin}/taskmanager.sh start-foreground",
            layout,
            environment={**flink_env, **loopback_only},
            stopwaitsecs=60,
        ),
        program("score-validator", f"{py} -m score_validator serve", layout, environment=service_env),
        program("storage-service", f"{py} -m storage_service serve", layout, environment=service_env),
        program("storage-consumer", f"{py} -m storage_service consume", layout, environment=service_env),
        program("llm-consumer", f"{py} -m llm_consumer", layout, environment=service_env, numprocs=2),
        program("retry-overload-consumer", f"{py} -m retry_consumers overload", layout, environment=service_env),
        program("retry-quota-consumer", f"{py} -m retry_consumers quota", layout, environment=service_env),
        program("kafka-ui", f"{py} -m kafka_ui", layout, environment=service_env),
        program(EMBEDDED_LLM, f"{py} -m local_llm", layout, environment=service_env),
        program(
            WATCHDOG,
            f"{py} -m flink_job.watchdog --log-file {layout.path('logs', 'flink-submit.log')}",
            layout,
            environment={
                **service_env,
                **flink_env,
                "FLINK_REST_URL": f"http://localhost:{layout.flink_rest_port}",
                "FLINK_CHECKPOINTS_DIR": layout.path("flink", "checkpoints"),
                "SCORE_VALIDATOR_URL": layout.score_validator_url,
                "TMPDIR": layout.path("flink", "tmp"),
            },
        ),
        program(
            BACKUP_SCORER,
            f"{py} -m score_validator backup-consumer",
            layout,
            environment={**service_env, "FLINK_REST_URL": f"http://localhost:{layout.flink_rest_port}"},
        ),
    ]
    conf = layout.path("supervisord.conf")
    conf.touch(mode=0o600)
    conf.chmod(0o600)  # it holds the stack's passwords (in DATABASE_URL and REDIS_URL)
    conf.write_text("\n".join(sections))
    return conf


def write_redis_secrets(layout: Layout) -> Path:
    """The password, in a 0600 file redis-server includes: not on its command line, which `ps` shows."""
    secrets_conf = layout.path("secrets", "redis.conf")
    secrets_conf.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    password = layout.redis_password.replace("\\", "\\\\").replace('"', '\\"')
    secrets_conf.touch(mode=0o600)
    secrets_conf.write_text(f'requirepass "{password}"\n')
    return secrets_conf


def supervisorctl(layout: Layout, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV / "bin" / "supervisorctl"), "-c", str(layout.path("supervisord.conf")), *args],
        capture_output=True,
        text=True,
        check=check,
    )


def supervisord_pid(layout: Layout) -> int | None:
    pidfile = layout.path("run", "supervisord.pid")
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None


def start_programs(layout: Layout, names: list[str]) -> None:
    status = supervisorctl(layout, "status", check=False).stdout
    for name in names:
        target = f"{name}:*" if name == "llm-consumer" else name
        line = next((ln for ln in status.splitlines() if ln.split(" ")[0].split(":")[0] == name), "")
        if "RUNNING" in line and name != "llm-consumer":
            continue
        supervisorctl(layout, "start", target, check=False)


# ---------------------------------------------------------------------------------------------
# Health checks and one-shot init steps.


def kafka_ready(layout: Layout) -> bool:
    from confluent_kafka.admin import AdminClient

    AdminClient({"bootstrap.servers": layout.kafka_bootstrap}).list_topics(timeout=3)
    return True


def postgres_ready(layout: Layout) -> bool:
    import psycopg

    with psycopg.connect(**postgres_superuser(layout), connect_timeout=3):
        return True


def postgres_superuser(layout: Layout) -> dict:
    """How the stack itself connects to its cluster: the socket, as `postgres`, with its password."""
    return {
        "host": str(layout.path("postgres", "run")),
        "port": urlparse(layout.database_url).port or 5432,
        "user": "postgres",
        "password": layout.postgres_superuser_password,
        "dbname": "postgres",
    }


def redis_ready(layout: Layout) -> bool:
    import redis

    return bool(redis.Redis.from_url(layout.redis_url, socket_timeout=2).ping())


def flink_ready(layout: Layout) -> bool:
    return http_json(f"http://localhost:{layout.flink_rest_port}/overview")["taskmanagers"] >= 1


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return resp.status == 200


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
    from common.kafka import ensure_topics

    created = ensure_topics(layout.kafka_bootstrap)
    log(f"topics: created {', '.join(created)}" if created else "topics: all present")


WATCHDOG = "flink-job-watchdog"  # keeps the Flink job deployed (flink_job/watchdog.py); compose: flink-job-submit


def deploy_flink_job(layout: Layout) -> None:
    """Starts the watchdog, which submits the job (and resubmits it whenever it goes missing), and
    waits until every task of the job runs."""
    from common.flink_rest import all_tasks_running, list_jobs, score_job

    start_programs(layout, [WATCHDOG])

    def job_runs() -> bool:
        job = score_job(list_jobs(f"http://localhost:{layout.flink_rest_port}", timeout_s=3))
        return job is not None and all_tasks_running(job)

    wait_for("Flink job (submitted by flink-job-watchdog)", job_runs, 300, interval_s=1, layout=layout)


def ollama_answers(url: str) -> bool:
    try:
        return http_ok(f"{url}/api/version")
    except (urllib.error.URLError, OSError):
        return False


# ---------------------------------------------------------------------------------------------
# Commands.


def ensure_ports_free(layout: Layout) -> None:
    busy = [f"{name} :{port}" for name, port in layout.ports().items() if port_open(port)]
    if busy:
        raise SystemExit(
            f"[stack] ports already in use by something else: {', '.join(busy)}. "
            "Stop it (another stack? `make down`) or change the ports (README, Configuration)."
        )


def up(layout: Layout, platform_only: bool) -> None:
    for sub in ("logs", "run"):
        layout.path(sub).mkdir(parents=True, exist_ok=True)
    if supervisord_pid(layout) is None:
        ensure_ports_free(layout)
        # Decided before anything starts: once started, the embedded server answers there itself.
        embedded_llm = not ollama_answers(layout.ollama_url)
        conf = write_supervisor_config(layout, embedded_llm)
        log(f"starting supervisord ({conf})")
        subprocess.run([str(VENV / "bin" / "supervisord"), "-c", str(conf)], check=True, env=os.environ)
        wait_for(
            "supervisord", lambda: supervisorctl(layout, "status", check=False).returncode in (0, 3), 20, layout=layout
        )
    start_programs(layout, PLATFORM)
    wait_for("Kafka", lambda: kafka_ready(layout), 120, layout=layout)
    wait_for("PostgreSQL", lambda: postgres_ready(layout), 60, layout=layout)
    wait_for("Redis", lambda: redis_ready(layout), 30, layout=layout)
    init_topics(layout)
    init_database(layout)
    wait_for("Flink cluster", lambda: flink_ready(layout), 120, layout=layout)
    if platform_only:
        print_summary(layout, platform_only=True)
        return
    if embedded_llm_configured(layout) or not ollama_answers(layout.ollama_url):
        log(
            f"LLM: nothing else answers at {layout.ollama_url}; using the embedded demo model "
            f"({EMBEDDED_MODEL_NAME}, small and often wrong; see README, 'The LLM')"
        )
        start_programs(layout, [EMBEDDED_LLM])
        wait_for("embedded LLM", lambda: ollama_answers(layout.ollama_url), 240, interval_s=1, layout=layout)
    else:
        log(f"LLM: using the Ollama API at {layout.ollama_url}")
    start_programs(layout, SERVICES)
    if layout.env.get("SCORE_VALIDATOR_BACKUP_CONSUMER", "").lower() in {"1", "true", "yes"}:
        start_programs(layout, [BACKUP_SCORER])
    wait_for(
        "score_validator", lambda: http_ok(f"{layout.score_validator_url}/health"), 240, interval_s=1, layout=layout
    )
    wait_for("storage_service", lambda: http_ok(f"http://localhost:{layout.storage_port}/health"), 60, layout=layout)
    wait_for("Kafka browser", lambda: http_ok(f"http://localhost:{layout.kafka_ui_port}/health"), 60, layout=layout)
    deploy_flink_job(layout)
    print_summary(layout, platform_only=False)


def embedded_llm_configured(layout: Layout) -> bool:
    return layout.path("run", "embedded-llm").exists()


def print_summary(layout: Layout, platform_only: bool) -> None:
    lines = [
        f"Kafka            {layout.kafka_bootstrap}",
        f"PostgreSQL       {masked(layout.database_url)}",
        f"Redis            {masked(layout.redis_url)}  (passwords: {layout.path('secrets')})",
        f"Flink dashboard  http://localhost:{layout.flink_rest_port}",
    ]
    if not platform_only:
        lines += [
            f"storage_service  http://localhost:{layout.storage_port}"
            "  (POST /query, GET /status/<id>, /metrics, /health)",
            f"score_validator  {layout.score_validator_url}  (GET /health, POST /score, POST /score/batch)",
            f"Kafka browser    http://localhost:{layout.kafka_ui_port}  (topics, consumer lag, latest messages)",
            f"LLM (Ollama API) {layout.ollama_url}",
        ]
    lines.append(f"logs             {layout.path('logs')}")
    log("up and healthy:\n  " + "\n  ".join(lines))


def down(layout: Layout) -> None:
    pid = supervisord_pid(layout)
    if pid is None:
        log("not running")
        return
    for tier in stop_plan(running_processes(layout)):
        log(f"stopping {', '.join(tier)}")
        with ThreadPoolExecutor(max_workers=len(tier)) as pool:  # in parallel; each waits out its grace
            list(pool.map(lambda name: supervisorctl(layout, "stop", name, check=False), tier))
    supervisorctl(layout, "shutdown", check=False)
    wait_for("supervisord to exit", lambda: supervisord_pid(layout) is None, 120)
    leftovers = [f"{name} :{port}" for name, port in layout.ports().items() if port_open(port)]
    if leftovers:
        raise SystemExit(f"[stack] still listening after shutdown: {', '.join(leftovers)}")
    log("stopped; data kept in " + str(layout.home))


def running_processes(layout: Layout) -> list[str]:
    """Names ('kafka', 'llm-consumer:llm-consumer-0') of the processes supervisord has not stopped."""
    lines = supervisorctl(layout, "status", check=False).stdout.splitlines()
    idle = ("STOPPED", "EXITED", "FATAL")
    return [line.split()[0] for line in lines if len(line.split()) > 1 and line.split()[1] not in idle]


def status(layout: Layout) -> None:
    if supervisord_pid(layout) is None:
        log("not running")
        return
    print(supervisorctl(layout, "status", check=False).stdout, end="")
    print(f"{'flink job':<33}{flink_job_status(layout)}")


def flink_job_status(layout: Layout) -> str:
    """The Flink job's state from the REST API, with a hint when it is not running."""
    from common.flink_rest import MISSING, all_tasks_running, list_jobs, score_job

    hint = f"; {WATCHDOG} resubmits it (log: {layout.path('logs', WATCHDOG + '.log')})"
    try:
        job = score_job(list_jobs(f"http://localhost:{layout.flink_rest_port}", timeout_s=3))
    except (OSError, ValueError, KeyError) as exc:
        return f"UNKNOWN (Flink REST API unreachable: {exc}){hint}"
    if job is None:
        return MISSING + hint
    tasks = job.get("tasks", {})
    state = f"{job['state']} (tasks running {tasks.get('running', 0)}/{tasks.get('total', 0)}, job {job['jid']})"
    return state if all_tasks_running(job) else state + hint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--name",
        default=os.environ.get("YAHOO_LLM_STACK", "stack"),
        help="stack name: its state folder under the state dir (tests use 'test-stack')",
    )
    parser.add_argument("--platform-only", action="store_true", help="Kafka, PostgreSQL, Redis and Flink only")
    args = parser.parse_args(argv)
    layout = Layout(args.name, dict(os.environ))
    {"up": lambda: up(layout, args.platform_only), "down": lambda: down(layout), "status": lambda: status(layout)}[
        args.command
    ]()


if __name__ == "__main__":
    main()
