"""LLM_CONSUMERS: how many llm-consumer processes the native stack runs, and everything that follows
the count: the supervisord programs and their group, each one's METRICS_PORT, Prometheus's targets,
the port plan `make up` checks, the stop grace, the refusal of a changed count on a running stack,
the warning when partitions leave some idle, and the one-line error for a bad value."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from scripts.platform import health, observability, processes
from scripts.platform.layout import ROOT, Layout
from tests.conftest import native_stack
from tests.unit.test_stack_config import full_config


@pytest.fixture
def layout_for(tmp_path):
    def make(**env: str) -> Layout:
        layout = Layout("unit-stack", env, state=tmp_path)
        layout.path("logs").mkdir(parents=True, exist_ok=True)  # supervisord checks log folders exist
        return layout

    return make


EXPECTED_PORTS = {
    "1": {"llm-consumer-0": 9102},
    "2": {"llm-consumer-0": 9102, "llm-consumer-1": 9103},
    "4": {"llm-consumer-0": 9102, "llm-consumer-1": 9103, "llm-consumer-2": 9112, "llm-consumer-3": 9113},
}


@pytest.mark.parametrize("count", sorted(EXPECTED_PORTS))
def test_supervisord_runs_as_many_llm_consumers_as_asked_each_on_its_port(layout_for, count):
    layout = layout_for(LLM_CONSUMERS=count)
    configs = full_config(layout)
    llm = {name: config for name, config in configs.items() if name.startswith("llm-consumer")}
    assert {name: int(config.environment["METRICS_PORT"]) for name, config in llm.items()} == EXPECTED_PORTS[count]
    assert all(config.command.endswith("-m llm_consumer") for config in llm.values())
    # One supervisord group, so `supervisorctl start llm-consumer:*` (make up, the tests) starts them all.
    group = "[group:llm-consumer]\nprograms=" + ",".join(EXPECTED_PORTS[count])
    assert group in layout.path("supervisord.conf").read_text()


@pytest.mark.parametrize("count", sorted(EXPECTED_PORTS))
def test_prometheus_scrapes_every_llm_consumer_and_the_port_plan_has_each(layout_for, count):
    layout = layout_for(LLM_CONSUMERS=count)
    conf = observability.write_prometheus_config(layout, backup_scorer=False)
    [job] = [job for job in yaml.safe_load(conf.read_text())["scrape_configs"] if job["job_name"] == "llm-consumer"]
    scraped = [target for config in job["static_configs"] for target in config["targets"]]
    assert scraped == [f"localhost:{port}" for port in EXPECTED_PORTS[count].values()]
    assert {config["labels"]["service"] for config in job["static_configs"]} == {"llm-consumer"}
    planned = {name.removesuffix(" metrics"): port for name, port in layout.ports().items()}
    assert {name: port for name, port in planned.items() if name.startswith("llm-consumer")} == EXPECTED_PORTS[count]


def test_two_consumers_by_default_on_the_documented_ports(layout_for):
    assert layout_for().llm_consumers == 2
    assert observability.llm_consumer_metrics_ports(2) == EXPECTED_PORTS["2"]


# Every fixed port of the native stack (README, "Configuration" and "Observability"; scripts/platform/):
# Kafka and its controller, PostgreSQL, Redis, Flink's REST API and JobManager RPC, the HTTP services,
# Prometheus, the dashboard, the LLM (Ollama API, embedded or not) and the tests' fake one.
OTHER_FIXED_PORTS = {9092, 9093, 5432, 6379, 8081, 6123, 8000, 5001, 8080, 9090, 8090, 11434, 11435}


@pytest.mark.parametrize(("consumers", "taskmanagers"), [("4", "2"), ("16", "8")])
def test_no_two_listeners_share_a_port(layout_for, consumers, taskmanagers):
    layout = layout_for(LLM_CONSUMERS=consumers, TASKMANAGERS=taskmanagers, SCORE_VALIDATOR_BACKUP_CONSUMER="true")
    plan = layout.ports()
    assert observability.clashing_ports(plan) == {}
    assert len(plan) == len(set(plan.values()))
    # What the processes are really given (METRICS_PORT, the Flink reporters' ports), the backup
    # scorer's included, against every other port of the stack.
    configs = full_config(layout)
    given = [int(c.environment["METRICS_PORT"]) for c in configs.values() if "METRICS_PORT" in c.environment]
    reporters = list(observability.flink_reporter_ports(int(taskmanagers)).values())
    assert len(given) == int(consumers) + 5  # storage, retry x2, watchdog, backup scorer
    everything = given + reporters + sorted(OTHER_FIXED_PORTS)
    assert len(everything) == len(set(everything)), sorted(everything)
    assert observability.BACKUP_SCORER_METRICS_PORT in given


def test_a_port_overridden_onto_a_consumers_is_found_before_anything_starts(layout_for):
    clash = observability.clashing_ports(layout_for(LLM_CONSUMERS="4", PROMETHEUS_PORT="9112").ports())
    assert clash == {9112: ["prometheus", "llm-consumer-2 metrics"]}
    assert observability.clashing_ports(layout_for(LLM_CONSUMERS="2", PROMETHEUS_PORT="9112").ports()) == {}


@pytest.mark.parametrize("bad", ["0", "17", "-1", "abc", "2.5"])
def test_a_bad_count_is_refused(layout_for, bad):
    with pytest.raises(ValidationError, match="llm_consumers"):
        _ = layout_for(LLM_CONSUMERS=bad).llm_consumers


@pytest.mark.parametrize(
    ("bad", "rule"), [("0", "greater than or equal to 1"), ("17", "less than or equal to 16"), ("x", "valid integer")]
)
def test_a_bad_count_stops_the_stack_command_with_one_line(bad, rule):
    """Not a traceback: the variable, its value and the rule, before the command does anything."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "stack.py"), "--name", "never-started", "status"],
        env={"LLM_CONSUMERS": bad, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"[stack] bad configuration: LLM_CONSUMERS='{bad}': Input should be ") and rule in line


def test_every_llm_consumer_may_finish_its_calls_and_stops_with_the_other_consumers(layout_for):
    layout = layout_for(LLM_CONSUMERS="16", LLM_TIMEOUT_S="200")
    configs = full_config(layout)
    assert configs["llm-consumer-15"].stopwaitsecs == 200 + processes.CONSUMER_STOP_MARGIN_S
    assert configs["storage-service"].stopwaitsecs == processes.DEFAULT_STOP_GRACE_S
    assert processes.stop_tier("llm-consumer:llm-consumer-15") == processes.stop_tier("storage-consumer") == 0


def test_compose_scrapes_the_llm_consumer_replicas_by_dns_whatever_the_native_count(layout_for):
    for count in ("1", "4"):
        targets = observability.scrape_targets(Layout("compose", {"LLM_CONSUMERS": count}))
        config = observability.prometheus_config(targets, compose=True)
        [job] = [job for job in config["scrape_configs"] if job["job_name"] == "llm-consumer"]
        assert job["dns_sd_configs"] == [{"names": ["llm-consumer"], "type": "A", "port": 9100}]
        assert "static_configs" not in job


# --- more consumers than partitions ---------------------------------------------------------


def test_consumers_beyond_the_partitions_are_announced_idle():
    assert processes.idle_llm_consumers_warning(3, 3) is None
    assert processes.idle_llm_consumers_warning(2, 3) is None
    one = processes.idle_llm_consumers_warning(4, 3)
    assert one is not None and "1 LLM consumer will sit idle" in one and "KAFKA_PARTITIONS=4" in one
    many = processes.idle_llm_consumers_warning(16, 6)
    assert many is not None and "10 LLM consumers will sit idle" in many and "questions-pending has 6" in many


def test_status_line_counts_members_against_consumers_and_partitions():
    assert health.consumer_group_summary(3, 3, 3) == "3/3 in the group, 3 partitions"
    assert health.consumer_group_summary(2, 3, 3).startswith("2/3 in the group, 3 partitions; 1 not in it")
    assert health.consumer_group_summary(4, 4, 3).endswith(
        "; 1 idle (more consumers than partitions: KAFKA_PARTITIONS)"
    )


# --- a running stack keeps its count ----------------------------------------------------------


def running(count: int) -> set[str]:
    """`supervisorctl status` names of a stack started with `count` LLM consumers."""
    return {"kafka", "flink-taskmanager", "storage-consumer", *(f"llm-consumer:llm-consumer-{i}" for i in range(count))}


def test_make_up_on_a_running_stack_refuses_another_count(layout_for, monkeypatch):
    stack = native_stack()
    assert processes.llm_consumers_among(running(3)) == 3
    monkeypatch.setattr(stack, "platform_programs", lambda layout: ["kafka", "flink-taskmanager"])
    monkeypatch.setattr(stack, "configured_processes", lambda layout: running(2))
    with pytest.raises(SystemExit, match=r"has 2 LLM consumers \(LLM_CONSUMERS=3 now\)"):
        stack.refuse_a_changed_platform(layout_for(LLM_CONSUMERS="3"))
    with pytest.raises(SystemExit, match=r"has 2 LLM consumers \(LLM_CONSUMERS=1 now\)"):
        stack.refuse_a_changed_platform(layout_for(LLM_CONSUMERS="1"))
    stack.refuse_a_changed_platform(layout_for())  # the same count: nothing to refuse


def test_bad_settings_are_named_by_their_variable():
    stack = native_stack()
    with pytest.raises(ValidationError) as error:
        Layout("x", {"LLM_CONSUMERS": "0", "TASKMANAGERS": "9"}).settings  # noqa: B018 - validation is the point
    assert stack.settings_problems(error.value) == (
        "TASKMANAGERS='9': Input should be less than or equal to 8; "
        "LLM_CONSUMERS='0': Input should be greater than or equal to 1"
    )
