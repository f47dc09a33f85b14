"""The stack's processes: which programs there are, the supervisord configuration that runs them
(one [program:x] section each, `%` escaped), the order they stop in, and supervisorctl."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from common import topics
from local_llm.config import LocalLLMSettings
from score_validator.config import ScoreValidatorSettings
from scripts.platform.config import (
    kafka_classpath,
    loopback_bind_preload,
    postgres_bin,
    pyflink_home,
    write_flink_config,
    write_kafka_config,
    write_redis_secrets,
)
from scripts.platform.layout import PYTHON, ROOT, STATE, VENV, Layout, running_as_root
from scripts.platform.observability import (
    BACKUP_SCORER_METRICS_PORT,
    LLM_CONSUMER_GROUP,
    flink_reporter_ports,
    llm_consumer_programs,
    prometheus_command,
    taskmanager_programs,
    worker_metrics_ports,
    write_prometheus_config,
)


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
    stopsignal: str = "TERM",
    stopwaitsecs: int | None = None,
    directory: Path = ROOT,
) -> str:
    """One [program:x] section. The stop grace defaults to stop_grace_s(name); the priority makes
    supervisord's own shutdown follow STOP_TIERS too; the pipeline's workers run niced (cpu_nice)."""
    nice = cpu_nice(name, layout.settings.worker_nice)
    if nice:
        command = f"nice -n {nice} {command}"  # nice execs the command: supervisord signals it directly
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
    lines.append(f"stdout_logfile={literal(layout.path('logs', name + '.log'))}")
    if user:
        lines.append(f"user={user}")
    if environment:
        lines.append(environment_line(environment))
    return "\n".join(lines) + "\n"


# Answer a user first: what a POST /query waits on keeps the default CPU priority. (The Flink
# JobManager too: its heartbeats decide whether a TaskManager is declared lost. And storage-consumer:
# it writes the outcomes and the cache entries a user's next request reads. Niced, the cache
# experiment's e2e test failed twice in a row, its cache holding more answers than it steered for.)
LATENCY_PATH = {"storage-service", "storage-consumer", "kafka", "postgres", "redis", "flink-jobmanager"}


def cpu_nice(name: str, worker_nice: int) -> int:
    """The nice value of a program: WORKER_NICE for the pipeline's workers, 0 on the latency path.

    On 2 cores, 8 connections of new questions at 0 for everyone: ~510 req/s, p99 33-34 ms, as the
    pipeline worked off what they asked; with the workers at 5: 660-760 req/s, p99 22-24 ms. The
    workers lose nothing when a core is idle: nice only orders who runs first on a busy one.
    """
    return 0 if name in LATENCY_PATH else worker_nice


def group(name: str, members: list[str]) -> str:
    """A [group:x] section: its processes are addressed as `x:member` (`supervisorctl start x:*`)."""
    return f"[group:{name}]\nprograms={','.join(members)}\npriority={stop_priority(name)}\n"


# Prometheus starts with the platform, so it sees Flink and the services from their first moment.
PLATFORM = ["kafka", "postgres", "redis", "flink-jobmanager", "flink-taskmanager", "prometheus"]
SERVICES = [
    "score-validator",
    "storage-service",
    "storage-consumer",
    LLM_CONSUMER_GROUP,  # the group of llm-consumer-0..N-1 (LLM_CONSUMERS)
    "retry-overload-consumer",
    "retry-quota-consumer",
    "kafka-ui",
    "dashboard",
]
EMBEDDED_LLM = "local-llm"
BACKUP_SCORER = "score-validator-backup"  # started only with SCORE_VALIDATOR_BACKUP_CONSUMER=true
EMBEDDED_MODEL_NAME = LocalLLMSettings.model_fields["local_llm_model_name"].default

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
    {"postgres", "redis", "prometheus"},  # Prometheus last: it records the others' stop
]
# An LLM consumer may be in a call of up to LLM_TIMEOUT_S when asked to stop; it then produces,
# flushes and commits. Consumers get that long plus this margin before supervisord kills them.
# The LLM consumers (llm-consumer-N, as many as LLM_CONSUMERS) are consumers too: is_consumer.
CONSUMERS = {"storage-consumer", "retry-overload-consumer", "retry-quota-consumer", BACKUP_SCORER}
CONSUMER_STOP_MARGIN_S = 30
DEFAULT_STOP_GRACE_S = 30


def platform_programs(layout: Layout) -> list[str]:
    """PLATFORM with every TaskManager the stack runs (TASKMANAGERS)."""
    taskmanagers = taskmanager_programs(layout.taskmanagers)
    return [p for name in PLATFORM for p in (taskmanagers if name == "flink-taskmanager" else [name])]


def stop_tier(name: str) -> int:
    """The tier of a program ('llm-consumer') or of one of its processes ('llm-consumer:llm-consumer-0')."""
    program_name = name.split(":", 1)[0]
    if program_name.startswith("flink-taskmanager"):
        program_name = "flink-taskmanager"  # flink-taskmanager-2... stop with the first
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


def is_consumer(name: str) -> bool:
    return name in CONSUMERS or name.startswith(f"{LLM_CONSUMER_GROUP}-")


def stop_grace_s(name: str, layout: Layout) -> int:
    if is_consumer(name):
        return int(layout.llm_timeout_s) + CONSUMER_STOP_MARGIN_S
    return DEFAULT_STOP_GRACE_S


WATCHDOG = "flink-job-watchdog"  # keeps the Flink job deployed (flink_job/watchdog.py); compose: flink-job-submit


def write_supervisor_config(layout: Layout, embedded_llm: bool) -> Path:
    """The supervisord configuration of every program (none started yet), with the configuration
    files they read. Run scripts.platform.init.initialise_storage first."""
    kafka_conf = write_kafka_config(layout)
    classpath = kafka_classpath()
    backup_scorer = ScoreValidatorSettings.from_env(layout.env).score_validator_backup_consumer
    prometheus_conf = write_prometheus_config(layout, backup_scorer=backup_scorer, embedded_llm=embedded_llm)
    flink_conf = write_flink_config(layout)
    flink_bin = pyflink_home() / "bin"
    loopback_only = loopback_bind_preload(layout)
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

    metrics_ports = worker_metrics_ports(layout.llm_consumers)

    def worker_env(program_name: str, **extra: object) -> dict:
        """A worker's environment: the services', with its own METRICS_PORT (port plan: observability.py)."""
        port = metrics_ports.get(program_name, BACKUP_SCORER_METRICS_PORT)
        return {**service_env, **extra, "METRICS_PORT": port}

    marker = layout.path("run", "embedded-llm")
    marker.unlink(missing_ok=True)
    if embedded_llm:
        marker.touch()
        if not layout.env.get("LLM_MODEL"):  # a model chosen explicitly is passed on as it is
            service_env["LLM_MODEL"] = EMBEDDED_MODEL_NAME
    py = str(PYTHON)
    llm_consumers = llm_consumer_programs(layout.llm_consumers)
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
            f"{postgres_bin() / 'postgres'} -D {layout.path('postgres', 'data')} -p {layout.postgres_port} "
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
            f"--dir {layout.path('redis')} --maxmemory {layout.settings.redis_maxmemory} "
            f"--maxmemory-policy {layout.settings.redis_maxmemory_policy}",
            layout,
        ),
        *(
            # One config for both JVMs; the Prometheus reporter's port as a dynamic property of each.
            program(
                name,
                f"{flink_bin}/{'jobmanager' if name == 'flink-jobmanager' else 'taskmanager'}.sh start-foreground "
                f"-D metrics.reporter.prom.port={port}",
                layout,
                environment={**flink_env, **loopback_only},
                stopwaitsecs=60,
            )
            for name, port in flink_reporter_ports(layout.taskmanagers).items()
        ),
        program("prometheus", prometheus_command(layout, prometheus_conf, prometheus_binary()), layout),
        program("score-validator", f"{py} -m score_validator serve", layout, environment=service_env),
        program("storage-service", f"{py} -m storage_service serve", layout, environment=service_env),
        program(
            "storage-consumer", f"{py} -m storage_service consume", layout, environment=worker_env("storage-consumer")
        ),
        *(program(name, f"{py} -m llm_consumer", layout, environment=worker_env(name)) for name in llm_consumers),
        group(LLM_CONSUMER_GROUP, llm_consumers),
        program(
            "retry-overload-consumer",
            f"{py} -m retry_consumers overload",
            layout,
            environment=worker_env("retry-overload-consumer"),
        ),
        program(
            "retry-quota-consumer",
            f"{py} -m retry_consumers quota",
            layout,
            environment=worker_env("retry-quota-consumer"),
        ),
        program("kafka-ui", f"{py} -m kafka_ui", layout, environment=service_env),
        program(
            "dashboard",
            f"{py} -m dashboard",
            layout,
            environment={
                **service_env,
                "DASHBOARD_PORT": layout.dashboard_port,
                "PROMETHEUS_URL": layout.prometheus_url,
            },
        ),
        program(EMBEDDED_LLM, f"{py} -m local_llm", layout, environment=service_env),
        program(
            WATCHDOG,
            f"{py} -m flink_job.watchdog --log-file {layout.path('logs', 'flink-submit.log')}",
            layout,
            environment=worker_env(
                WATCHDOG,
                **flink_env,
                FLINK_REST_URL=layout.flink_rest_url,
                FLINK_CHECKPOINTS_DIR=layout.path("flink", "checkpoints"),
                SCORE_VALIDATOR_URL=layout.score_validator_url,
                TMPDIR=layout.path("flink", "tmp"),
            ),
        ),
        program(
            BACKUP_SCORER,
            f"{py} -m score_validator backup-consumer",
            layout,
            environment=worker_env(BACKUP_SCORER, FLINK_REST_URL=layout.flink_rest_url),
        ),
    ]
    conf = layout.path("supervisord.conf")
    conf.touch(mode=0o600)
    conf.chmod(0o600)  # it holds the stack's passwords (in DATABASE_URL and REDIS_URL)
    conf.write_text("\n".join(sections))
    return conf


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise SystemExit("[stack] Prometheus is not installed; run scripts/install.sh")
    return found


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
        target = f"{name}:*" if name == LLM_CONSUMER_GROUP else name
        line = next((ln for ln in status.splitlines() if ln.split(" ")[0].split(":")[0] == name), "")
        if "RUNNING" in line and name != LLM_CONSUMER_GROUP:
            continue
        supervisorctl(layout, "start", target, check=False)


def configured_processes(layout: Layout) -> set[str]:
    """Processes ('kafka', 'llm-consumer:llm-consumer-0') the running supervisord was configured with."""
    lines = supervisorctl(layout, "status", check=False).stdout.splitlines()
    return {line.split()[0] for line in lines if line.strip()}


def program_of(process: str) -> str:
    """The program ('llm-consumer') of a process ('llm-consumer:llm-consumer-0'), else the process itself."""
    return process.split(":", 1)[0]


def llm_consumers_among(processes: set[str]) -> int:
    """How many of `processes` are LLM consumers (members of the supervisord group)."""
    return sum(1 for name in processes if program_of(name) == LLM_CONSUMER_GROUP)


def idle_llm_consumers_warning(consumers: int, partitions: int) -> str | None:
    """What `make up` says when LLM consumers would get no work, else None. Kafka gives each partition
    of questions-pending to one member of the group: beyond `partitions`, consumers wait as standbys
    (one takes over the partitions of a consumer that dies or stops). Useful, so not refused."""
    idle = consumers - partitions
    if idle <= 0:
        return None
    return (
        f"LLM_CONSUMERS={consumers} but {topics.QUESTIONS_PENDING} has {partitions} partitions: "
        f"{idle} LLM consumer{'s' if idle > 1 else ''} will sit idle (standbys that take over when another "
        f"leaves the group). For all of them to work: KAFKA_PARTITIONS={consumers} (partitions never shrink)"
    )


def running_processes(layout: Layout) -> list[str]:
    """Names ('kafka', 'llm-consumer:llm-consumer-0') of the processes supervisord has not stopped."""
    lines = supervisorctl(layout, "status", check=False).stdout.splitlines()
    idle = ("STOPPED", "EXITED", "FATAL")
    return [line.split()[0] for line in lines if len(line.split()) > 1 and line.split()[1] not in idle]
