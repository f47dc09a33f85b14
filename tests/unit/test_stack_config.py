"""What scripts/stack.py (its parts in scripts/platform/) generates for the native stack, read back
the way its consumers read it (supervisord's own parser): secure defaults, `%` escaping, the stop
order and grace."""

from __future__ import annotations

import io
import re
import stat
from urllib.parse import urlparse

import pytest
from supervisor.options import ServerOptions

from scripts.platform import config as stack_config
from scripts.platform import observability, processes
from scripts.platform.layout import Layout, masked


@pytest.fixture
def layout_for(tmp_path):
    """A Layout whose state folder is a temporary one."""

    def make(**env: str):
        layout = Layout("unit-stack", env, state=tmp_path)
        layout.path("logs").mkdir(parents=True, exist_ok=True)  # supervisord checks log folders exist
        return layout

    return make


def parse_programs(*sections: str) -> dict:
    """The [program:x] sections as supervisord itself reads them: process name -> its config."""
    options = ServerOptions()
    options.configfile = None
    options.read_config(io.StringIO("[supervisord]\nlogfile=/tmp/unused.log\n" + "\n".join(sections)))
    return {
        process.name: process
        for group in options.configroot.supervisord.process_group_configs
        for process in group.process_configs
    }


# --- `%` in values: supervisord expands %(name)s, so ours are written %% -----------------------


def test_percent_in_environment_and_command_reaches_the_process_unchanged(layout_for):
    env = {
        "REDIS_URL": "redis://:p%40ss%25word@localhost:6379/0",  # a URL-encoded password
        "DATABASE_URL": "postgresql://yahoo:a%2Cb@localhost:5432/yahoo_llm",
        "LIST": "a,b=c",
    }
    section = processes.program("svc", "/bin/echo 100% done", layout_for(WORKER_NICE="0"), environment=env)
    assert 'REDIS_URL="redis://:p%%40ss%%25word@localhost:6379/0"' in section
    [config] = parse_programs(section).values()
    assert config.environment == env
    assert config.command == "/bin/echo 100% done"


def test_a_double_quote_in_a_value_is_refused_not_mangled(layout_for):
    with pytest.raises(SystemExit, match="PASSWORD"):
        processes.program("svc", "/bin/true", layout_for(), environment={"PASSWORD": 'a"b'})


# --- orderly stop ---------------------------------------------------------------------------


def test_stop_plan_services_first_then_llm_flink_scorer_kafka_and_stores_last():
    running = [
        "redis",
        "postgres",
        "kafka",
        "flink-jobmanager",
        "flink-taskmanager",
        "score-validator",
        "storage-service",
        "storage-consumer",
        "llm-consumer:llm-consumer-0",
        "llm-consumer:llm-consumer-1",
        "retry-overload-consumer",
        "retry-quota-consumer",
        "kafka-ui",
        "local-llm",
        "flink-job-watchdog",
    ]
    assert processes.stop_plan(running) == [
        sorted(
            [
                "flink-job-watchdog",
                "kafka-ui",
                "llm-consumer:llm-consumer-0",
                "llm-consumer:llm-consumer-1",
                "retry-overload-consumer",
                "retry-quota-consumer",
                "storage-consumer",
                "storage-service",
            ]
        ),
        ["local-llm"],
        ["flink-jobmanager", "flink-taskmanager"],
        ["score-validator"],
        ["kafka"],
        ["postgres", "redis"],
    ]


def test_supervisord_priorities_give_its_own_shutdown_the_same_order(layout_for):
    """supervisord stops the highest priority first; every program's section says so."""
    names = ["storage-consumer", "local-llm", "flink-jobmanager", "score-validator", "kafka", "postgres"]
    parsed = parse_programs(*(processes.program(name, "/bin/true", layout_for()) for name in names))
    priorities = [parsed[name].priority for name in names]
    assert priorities == sorted(priorities, reverse=True) and len(set(priorities)) == len(priorities)


@pytest.mark.parametrize("timeout", ["120", "3", "400"])
def test_consumers_may_finish_an_llm_call_before_they_are_killed(layout_for, timeout):
    layout = layout_for(LLM_TIMEOUT_S=timeout)
    consumers = [*sorted(processes.CONSUMERS), *observability.llm_consumer_programs(16)]
    parsed = parse_programs(*(processes.program(name, "/bin/true", layout) for name in consumers))
    assert {"llm-consumer-0", "llm-consumer-1", "llm-consumer-15", "storage-consumer"} <= set(parsed)
    for name, config in parsed.items():
        assert config.stopwaitsecs > float(timeout) + 10, name
    api = parse_programs(processes.program("storage-service", "/bin/true", layout))["storage-service"]
    assert api.stopwaitsecs == processes.DEFAULT_STOP_GRACE_S


# --- secure defaults ------------------------------------------------------------------------


def test_everything_listens_on_loopback_unless_bind_host_says_otherwise(layout_for):
    assert layout_for().bind_host == "127.0.0.1"
    assert layout_for(BIND_HOST="0.0.0.0").bind_host == "0.0.0.0"
    conf = stack_config.write_kafka_config(layout_for()).read_text()
    assert "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://localhost:9093" in conf
    exposed = stack_config.write_kafka_config(layout_for(BIND_HOST="0.0.0.0", KAFKA_BOOTSTRAP_SERVERS="localhost:9192"))
    assert "listeners=PLAINTEXT://0.0.0.0:9192,CONTROLLER://localhost:9193" in exposed.read_text()


def test_flink_listens_on_loopback(layout_for):
    import yaml

    config = yaml.safe_load((stack_config.write_flink_config(layout_for()) / "config.yaml").read_text())
    assert config["rest.bind-address"] == "127.0.0.1"
    assert config["jobmanager.bind-host"] == config["taskmanager.bind-host"] == "127.0.0.1"
    exposed = yaml.safe_load(
        (stack_config.write_flink_config(layout_for(BIND_HOST="0.0.0.0")) / "config.yaml").read_text()
    )
    assert exposed["rest.bind-address"] == "0.0.0.0"
    assert exposed["jobmanager.bind-host"] == "127.0.0.1"  # internal ports stay on loopback


def test_postgres_authenticates_every_connection_by_password():
    local = stack_config.pg_hba_lines("127.0.0.1")
    rules = [line.split() for line in local if line and not line.startswith("#")]
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules)
    assert not any("trust" in rule for rule in rules)
    assert {rule[3] for rule in rules if rule[0] == "host"} == {"127.0.0.1/32", "::1/128"}
    exposed = [line.split() for line in stack_config.pg_hba_lines("0.0.0.0") if line and not line.startswith("#")]
    assert ["host", "all", "all", "0.0.0.0/0", "scram-sha-256"] in exposed


def test_redis_password_is_generated_once_per_stack_and_kept_private(layout_for):
    layout = layout_for()
    url = urlparse(layout.redis_url)
    assert url.password and len(url.password) >= 24 and url.port == 6379
    assert layout_for().redis_url == layout.redis_url  # the same on every start
    secret = layout.path("secrets", "redis")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    included = stack_config.write_redis_secrets(layout)
    assert included.read_text() == f'requirepass "{url.password}"\n'
    assert stat.S_IMODE(included.stat().st_mode) == 0o600


def test_redis_password_from_the_environment(layout_for):
    given = layout_for(REDIS_PASSWORD="p@ss%w,rd", REDIS_URL="redis://localhost:6390/1")
    assert given.redis_url == "redis://:p%40ss%25w%2Crd@localhost:6390/1" and given.redis_port == 6390
    assert given.redis_password == "p@ss%w,rd"
    in_url = layout_for(REDIS_URL="redis://:s%40cret@localhost:6379/0", REDIS_PASSWORD="ignored")
    assert in_url.redis_password == "s@cret" and in_url.redis_url == "redis://:s%40cret@localhost:6379/0"
    assert not in_url.path("secrets", "redis").exists()


def test_passwords_are_masked_when_printed():
    assert masked("redis://:s3cret@localhost:6379/0") == "redis://:***@localhost:6379/0"
    assert masked("postgresql://yahoo:yahoo@localhost:5432/db") == "postgresql://yahoo:***@localhost:5432/db"
    assert masked("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_flink_wildcard_binds_become_loopback_binds(layout_for):
    """The shim preloaded into the Flink processes (Beam's Fn API servers bind every interface)."""
    import shutil
    import subprocess
    import sys

    assert stack_config.loopback_bind_preload(layout_for(BIND_HOST="0.0.0.0")) == {}
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler (scripts/install.sh installs gcc)")
    preload = stack_config.loopback_bind_preload(layout_for())["LD_PRELOAD"]
    probe = (
        "import socket\n"
        "v4 = socket.socket(); v4.bind(('0.0.0.0', 0))\n"
        "v6 = socket.socket(socket.AF_INET6); v6.bind(('::', 0))\n"
        "kept = socket.socket(); kept.bind(('127.0.0.2', 0))\n"
        "print(v4.getsockname()[0], v6.getsockname()[0], kept.getsockname()[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env={"LD_PRELOAD": str(preload)}, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["127.0.0.1", "::ffff:127.0.0.1", "127.0.0.2"]


# --- Prometheus: one list of scrape targets, the ports the processes get, the generated config ---


def full_config(layout: Layout) -> dict:
    """Every process of the supervisord configuration `make up` writes, as supervisord reads it."""
    layout.path("run").mkdir(parents=True, exist_ok=True)  # `up` makes it before it writes the config
    conf = processes.write_supervisor_config(layout, embedded_llm=False)
    options = ServerOptions()
    options.configfile = None
    options.read_config(io.StringIO(conf.read_text()))
    return {
        process.name: process
        for group in options.configroot.supervisord.process_group_configs
        for process in group.process_configs
    }


def test_the_scrape_targets_are_the_jobs_and_distinct_ports_of_the_port_plan(layout_for):
    targets = observability.scrape_targets(layout_for(), backup_scorer=True)
    assert {t.job for t in targets} == {
        "storage",
        "score-validator",
        "kafka-ui",
        "storage-consumer",
        "llm-consumer",
        "retry-consumer",
        "flink",
        "prometheus",
        "watchdog",
        "dashboard",
    }
    ports = [t.port for t in targets]
    assert len(ports) == len(set(ports)), ports
    by_service = {(t.service, t.port) for t in targets}
    assert {("llm-consumer", 9102), ("llm-consumer", 9103), ("flink-jobmanager", 9249)} <= by_service
    assert ("flink-taskmanager", 9250) in by_service and ("prometheus", 9090) in by_service
    assert "score-validator-backup" not in {t.service for t in observability.scrape_targets(layout_for())}
    embedded = observability.scrape_targets(layout_for(), embedded_llm=True)
    assert ("local-llm", 11434, "/metrics/prometheus") in {(t.job, t.port, t.path) for t in embedded}


def test_every_scraped_process_serves_where_its_target_points(layout_for):
    """METRICS_PORT of each worker, the Flink reporter port of each JVM and Prometheus's own
    address, read back from the supervisord configuration: the same ports as the scrape targets."""
    layout = layout_for(SCORE_VALIDATOR_BACKUP_CONSUMER="true")
    configs = full_config(layout)
    serving: dict[str, set[int]] = {}
    for name, config in configs.items():
        if "METRICS_PORT" in config.environment:
            serving.setdefault(name, set()).add(int(config.environment["METRICS_PORT"]))
        if reporter := re.search(r"metrics\.reporter\.prom\.port=(\d+)", config.command):
            serving.setdefault(name, set()).add(int(reporter.group(1)))
    assert "METRICS_PORT" not in configs["storage-service"].environment  # it serves on its own HTTP port
    assert "--web.listen-address=127.0.0.1:9090" in configs["prometheus"].command
    targets = observability.scrape_targets(layout, backup_scorer=True)
    http_served = {"storage-service", "score-validator", "kafka-ui", "prometheus", "dashboard"}
    expected = {t.port for t in targets if t.service not in http_served}
    assert {port for ports in serving.values() for port in ports} == expected
    assert serving["llm-consumer-0"] != serving["llm-consumer-1"]
    assert configs["llm-consumer-0"].environment["KAFKA_BOOTSTRAP_SERVERS"] == layout.kafka_bootstrap


def test_prometheus_keeps_its_data_in_the_stack_with_a_bounded_retention(layout_for):
    layout = layout_for()
    command = full_config(layout)["prometheus"].command
    assert f"--storage.tsdb.path={layout.path('prometheus', 'data')}" in command
    assert "--storage.tsdb.retention.time=7d" in command and "--storage.tsdb.retention.size=1GB" in command
    assert f"--config.file={layout.path('prometheus', 'prometheus.yml')}" in command


def test_the_llm_consumers_are_one_group_of_two_programs(layout_for):
    processes_by_name = full_config(layout_for())
    assert {"llm-consumer-0", "llm-consumer-1"} <= set(processes_by_name)
    assert processes.stop_tier("llm-consumer:llm-consumer-1") == processes.stop_tier("storage-consumer")


def test_the_native_prometheus_config_passes_promtool(layout_for):
    import shutil
    import subprocess

    import yaml

    conf = observability.write_prometheus_config(layout_for(), backup_scorer=True)
    scraped = yaml.safe_load(conf.read_text())
    assert scraped["global"]["scrape_interval"] == "5s"
    addresses = {a for job in scraped["scrape_configs"] for c in job["static_configs"] for a in c["targets"]}
    assert {"localhost:9102", "localhost:9103", "localhost:9249", "localhost:9250", "localhost:5001"} <= addresses
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/install.sh installs Debian's prometheus)")
    result = subprocess.run([promtool, "check", "config", str(conf)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_refuses_a_broken_config(tmp_path):
    """The check above can fail: a job without a name is refused."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/install.sh installs Debian's prometheus)")
    broken = tmp_path / "prometheus.yml"
    broken.write_text("scrape_configs:\n- static_configs:\n  - targets: [localhost:1]\n")
    assert subprocess.run([promtool, "check", "config", str(broken)], capture_output=True).returncode != 0


def test_flink_runs_the_prometheus_reporter(layout_for):
    import yaml

    config = yaml.safe_load((stack_config.write_flink_config(layout_for()) / "config.yaml").read_text())
    assert config["metrics.reporter.prom.factory.class"] == stack_config.PROMETHEUS_REPORTER_FACTORY
    plugin = stack_config.pyflink_home() / "plugins" / "metrics-prometheus"
    assert list(plugin.glob("flink-metrics-prometheus-*.jar")), f"no reporter in {plugin} (scripts/install.sh)"


def test_two_taskmanagers_run_as_two_programs_each_with_its_reporter_port_and_stop_together(layout_for):
    layout = layout_for(TASKMANAGERS="2")
    configs = full_config(layout)
    assert processes.platform_programs(layout).count("flink-taskmanager-2") == 1
    second = configs["flink-taskmanager-2"].command
    assert "/taskmanager.sh start-foreground" in second and "metrics.reporter.prom.port=9251" in second
    assert "metrics.reporter.prom.port=9250" in configs["flink-taskmanager"].command
    assert ["flink-jobmanager", "flink-taskmanager", "flink-taskmanager-2"] in processes.stop_plan(list(configs))
    flink = {(t.service, t.port) for t in observability.scrape_targets(layout) if t.job == "flink"}
    assert flink == {("flink-jobmanager", 9249), ("flink-taskmanager", 9250), ("flink-taskmanager", 9251)}
    assert layout.ports()["flink-taskmanager-2 metrics"] == 9251
    assert "flink-taskmanager-2" not in full_config(layout_for())  # one TaskManager by default


def test_compose_finds_every_taskmanager_replica_by_dns(layout_for):
    config = observability.prometheus_config(observability.scrape_targets(layout_for()), compose=True)
    flink = next(job for job in config["scrape_configs"] if job["job_name"] == "flink")
    assert flink["dns_sd_configs"] == [{"names": ["flink-taskmanager"], "type": "A", "port": 9249}]
    assert flink["static_configs"][0]["targets"] == ["flink-jobmanager:9249"]


def test_topics_get_the_configured_partitions(layout_for):
    kafka_conf = stack_config.write_kafka_config(layout_for(KAFKA_PARTITIONS="6")).read_text()
    assert "num.partitions=6" in kafka_conf
