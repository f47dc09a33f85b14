"""The configuration files a stack's processes read, generated into its folder: Kafka's
server.properties, Flink's config.yaml and log4j files, PostgreSQL's pg_hba.conf, Redis's password
file; and the loopback-bind shim preloaded into the Flink processes."""

from __future__ import annotations

import glob
import ipaddress
import shutil
import subprocess
from pathlib import Path

from scripts.platform.layout import PYTHON, ROOT, STATE, Layout, log, read_versions, running_as_root, url_host

PLATFORM_FILES = ROOT / "scripts" / "platform"
FLINK_LOG4J_CONSOLE = PLATFORM_FILES / "flink-log4j-console.properties"
PROMETHEUS_REPORTER_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"


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


def kafka_classpath() -> str:
    """Kafka's jars, of the version .env pins (scripts/install.sh fetches them)."""
    return f"{STATE / 'jars' / ('kafka-' + read_versions()['KAFKA_VERSION'])}/*"


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
                f"num.partitions={layout.settings.kafka_partitions}",
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
    source = PLATFORM_FILES / "loopback_bind.c"
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
        # With TASKMANAGERS > 1, a job at parallelism N takes slots on every TaskManager, not all on one.
        "taskmanager.load-balance.mode": "SLOTS",
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
        # Prometheus reporter (plugins/metrics-prometheus, scripts/install.sh); each JVM's port is
        # given on its command line (processes.py), the wildcard bind made loopback by the shim.
        "metrics.reporter.prom.factory.class": PROMETHEUS_REPORTER_FACTORY,
    }
    for sub in ("run", "tmp", "web", "blob", "checkpoints"):
        (flink / sub).mkdir(parents=True, exist_ok=True)
    (conf_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    shutil.copy(FLINK_LOG4J_CONSOLE, conf_dir / "log4j-console.properties")
    shutil.copy(pyflink_home() / "conf" / "log4j-cli.properties", conf_dir / "log4j-cli.properties")
    return conf_dir


def write_redis_secrets(layout: Layout) -> Path:
    """The password, in a 0600 file redis-server includes: not on its command line, which `ps` shows."""
    secrets_conf = layout.path("secrets", "redis.conf")
    secrets_conf.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    password = layout.redis_password.replace("\\", "\\\\").replace('"', '\\"')
    secrets_conf.touch(mode=0o600)
    secrets_conf.write_text(f'requirepass "{password}"\n')
    return secrets_conf
