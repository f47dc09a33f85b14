"""The compose `observability` profile, checked without a Docker engine: compose's own parser with the
profile on, Prometheus's configuration (generated from the native stack's scrape targets, checked by
promtool), Grafana's provisioning files and dashboard JSON (metric names from the agreed list only)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from scripts.platform import observability
from tests.conftest import ROOT
from tests.static.test_docker import COMPOSE, compose, tool

GRAFANA = ROOT / "observability" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PROVISIONING = sorted((GRAFANA / "provisioning").rglob("*.yml"))
# The metric names every part agreed on (issue 9); Flink's own reporter's are flink_*.
AGREED_METRICS = {
    "yahoo_http_requests_total",
    "yahoo_http_request_duration_seconds",
    "yahoo_cache_requests_total",
    "yahoo_questions_accepted_total",
    "yahoo_questions_published_total",
    "yahoo_llm_calls_total",
    "yahoo_llm_call_duration_seconds",
    "yahoo_llm_tokens_total",
    "yahoo_llm_calls_skipped_total",
    "yahoo_retries_total",
    "yahoo_dead_letters_total",
    "yahoo_consumer_outages_total",
    "yahoo_consumer_handler_failures_total",
    "yahoo_consumer_rebuilds_total",
    "yahoo_consumer_messages_total",
    "yahoo_worker_last_poll_timestamp_seconds",
    "yahoo_outcomes_total",
    "yahoo_duplicate_outcomes_total",
    "yahoo_f1_score",
    "yahoo_regeneration_f1",
    "yahoo_attempts_per_question",
    "yahoo_end_to_end_seconds",
    "yahoo_score_requests_total",
    "yahoo_score_duration_seconds",
    "yahoo_kafka_consumer_lag",
    "yahoo_kafka_consumer_group_members",
    "yahoo_flink_job_up",
}
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "max", "min", "time", "le", "up"}


def compose_with_profile(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("docker-compose"), "-f", str(COMPOSE), "--profile", "observability", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def test_compose_with_the_observability_profile_parses():
    result = compose_with_profile("config", "-q")
    assert result.returncode == 0, result.stderr
    services = compose_with_profile("config", "--services").stdout.split()
    assert {"prometheus", "grafana", "dashboard", "storage-service"} <= set(services)


def test_the_committed_prometheus_config_is_the_generated_one():
    """observability/prometheus.yml is generated from the native stack's scrape targets."""
    committed = observability.COMPOSE_PROMETHEUS_CONFIG.read_text()
    assert committed == observability.compose_prometheus_config(), (
        "observability/prometheus.yml is stale: run `python -m scripts.platform.observability`"
    )


def test_promtool_accepts_the_compose_prometheus_config():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/install.sh installs Debian's prometheus)")
    result = subprocess.run(
        [promtool, "check", "config", str(observability.COMPOSE_PROMETHEUS_CONFIG)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def scraped_hosts(config: dict) -> dict[str, str]:
    """host -> port of every static target, and of every DNS name, of a Prometheus config."""
    hosts = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for address in static["targets"]:
                host, port = address.rsplit(":", 1)
                hosts[host] = port
        for dns in job.get("dns_sd_configs", []):
            hosts.update({name: str(dns["port"]) for name in dns["names"]})
    return hosts


def test_prometheus_in_compose_scrapes_compose_services_on_their_ports():
    services = compose()["services"]
    config = yaml.safe_load(observability.COMPOSE_PROMETHEUS_CONFIG.read_text())
    hosts = scraped_hosts(config)
    assert set(hosts) <= set(services), set(hosts) - set(services)
    for host, port in hosts.items():
        env = services[host].get("environment", {})
        if port == str(observability.COMPOSE_METRICS_PORT):
            assert env.get("METRICS_PORT") == port and env.get("BIND_HOST") == "0.0.0.0", host
    # Replicas: one DNS name resolving to every container, so each one is scraped.
    [llm] = [job for job in config["scrape_configs"] if job["job_name"] == "llm-consumer"]
    assert llm["dns_sd_configs"] == [{"names": ["llm-consumer"], "type": "A", "port": 9100}]
    assert services["llm-consumer"]["deploy"]["replicas"] == 2
    mounted = services["prometheus"]["volumes"]
    assert "./observability/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounted


def test_every_compose_worker_serves_metrics():
    services = compose()["services"]
    # The consumers (their healthcheck reads the liveness file) and the Flink job's watchdog.
    workers = [name for name, service in services.items() if "/tmp/alive" in str(service.get("healthcheck"))]
    workers.append("flink-job-submit")
    assert {"storage-consumer", "llm-consumer", "retry-quota-consumer"} <= set(workers)
    for name in workers:
        assert services[name]["environment"]["METRICS_PORT"] == "9100", name


def test_the_flink_image_and_cluster_run_the_prometheus_reporter():
    dockerfile = (ROOT / "flink_job" / "Dockerfile").read_text()
    assert "org.apache.flink:flink-metrics-prometheus:${FLINK_VERSION}" in dockerfile
    assert "/opt/flink/plugins/metrics-prometheus/" in dockerfile
    properties = yaml.safe_load(compose()["x-flink-env"]["FLINK_PROPERTIES"])
    assert properties["metrics.reporter.prom.factory.class"].endswith("PrometheusReporterFactory")
    assert properties["metrics.reporter.prom.port"] == observability.FLINK_REPORTER_PORTS["flink-jobmanager"]


def test_grafana_provisioning_files_parse_and_point_at_the_fleet():
    assert PROVISIONING, "no Grafana provisioning file"
    parsed = {path.name: yaml.safe_load(path.read_text()) for path in PROVISIONING}
    datasources = {d["uid"]: d for d in parsed["datasources.yml"]["datasources"]}
    assert datasources["prometheus"]["url"] == "http://prometheus:9090"
    assert datasources["postgres"]["url"] == "postgres:5432"
    [provider] = parsed["dashboards.yml"]["providers"]
    mounts = dict(v.split(":")[:2] for v in compose()["services"]["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./observability/grafana/dashboards"] == provider["options"]["path"]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (bucket/sum/count suffixes of histograms stripped)."""
    without_strings = re.sub(r'"[^"]*"', "", expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    without_labels = re.sub(r"\{[^}]*\}|\bby\s*\([^)]*\)", "", without_ranges)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_labels)) - PROMQL_WORDS
    return {re.sub(r"_(bucket|sum|count)$", "", word) for word in words}


def test_metric_names_are_read_from_promql():
    assert metric_names('sum by (le) (rate(yahoo_f1_score_bucket{attempt="1"}[5m]))') == {"yahoo_f1_score"}


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_grafana_panels_read_only_agreed_metrics(dashboard: Path):
    panels = json.loads(dashboard.read_text())["panels"]
    promql = [t["expr"] for p in panels for t in p["targets"] if p["datasource"]["uid"] == "prometheus"]
    assert len(promql) >= 10, "the panels of issue 9 are missing"
    read = set().union(*(metric_names(expr) for expr in promql))
    unknown = {name for name in read if name not in AGREED_METRICS and not name.startswith("flink_")}
    assert not unknown, f"{dashboard.name} reads metrics nobody agreed on: {unknown}"
    assert {"yahoo_f1_score", "yahoo_kafka_consumer_lag", "yahoo_end_to_end_seconds"} <= read
    uids = {p["datasource"]["uid"] for p in panels}
    assert uids <= {"prometheus", "postgres"}
