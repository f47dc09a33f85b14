"""The native stack: the twin of docker-compose.yml, run as local processes under supervisord.

    python scripts/stack.py up [--platform-only]   start (or complete) the stack, wait until healthy
    python scripts/stack.py down                   stop everything `up` started; data stays
    python scripts/stack.py status                 what runs, and where

Every process inherits the caller's environment, so the variables of DESIGN.md configure both
modes alike (common.settings.StackSettings reads them). State (data, logs, generated configs)
lives in $YAHOO_LLM_STATE_DIR/<stack name>. This file is the command line; the parts live in
scripts/platform/: layout.py (a stack's folders and endpoints), config.py (configuration files),
init.py (first-start initialisation), processes.py (the programs under supervisord, the stop order),
observability.py (Prometheus: the scrape targets and their configuration), health.py (waits),
deploy.py (the Flink job).
"""

# ruff: noqa: E402 - the settings are checked (check_settings) before the platform's modules read them
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Run as a script (`python scripts/stack.py`): the project's packages are importable from its root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import ValidationError

from common.settings import StackSettings


def settings_problems(error: ValidationError) -> str:
    """Each bad setting as its variable, its value and the rule it breaks, on one line:
    `LLM_CONSUMERS='0': Input should be greater than or equal to 1`."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']).upper()}={problem['input']!r}: {problem['msg']}"
        for problem in error.errors()
    )


def check_settings() -> None:
    """A bad setting (LLM_CONSUMERS=0, TASKMANAGERS=many) stops the command with one line, not a traceback."""
    try:
        StackSettings()
    except ValidationError as exc:
        raise SystemExit(f"[stack] bad configuration: {settings_problems(exc)} (README, Configuration)") from None


check_settings()  # before the imports below: scripts/platform/layout.py reads the settings as it loads

from common import topics
from score_validator.config import ScoreValidatorSettings
from scripts.platform.deploy import deploy_flink_job, flink_job_status
from scripts.platform.health import (
    consumer_group_summary,
    flink_ready,
    group_member_count,
    http_ok,
    kafka_ready,
    ollama_answers,
    port_open,
    postgres_ready,
    redis_ready,
    scrape_health,
    topic_partitions,
    wait_for,
)
from scripts.platform.init import init_database, init_topics, initialise_storage
from scripts.platform.layout import VENV, Layout, log, masked
from scripts.platform.observability import SCRAPE_INTERVAL, clashing_ports, llm_consumer_metrics_ports
from scripts.platform.processes import (
    BACKUP_SCORER,
    EMBEDDED_LLM,
    EMBEDDED_MODEL_NAME,
    PLATFORM,
    SERVICES,
    configured_processes,
    idle_llm_consumers_warning,
    llm_consumers_among,
    platform_programs,
    program_of,
    running_processes,
    start_programs,
    stop_plan,
    supervisorctl,
    supervisord_pid,
    write_supervisor_config,
)

__all__ = ["BACKUP_SCORER", "EMBEDDED_LLM", "PLATFORM", "SERVICES", "Layout", "main"]


def ensure_ports_free(layout: Layout) -> None:
    clashes = clashing_ports(layout.ports())
    if clashes:
        shared = "; ".join(f":{port} for {' and '.join(names)}" for port, names in sorted(clashes.items()))
        raise SystemExit(
            f"[stack] two listeners were given one port: {shared}. Change the ports (README, Configuration)."
        )
    busy = [f"{name} :{port}" for name, port in layout.ports().items() if port_open(port)]
    if busy:
        raise SystemExit(
            f"[stack] ports already in use by something else: {', '.join(busy)}. "
            "Stop it (another stack? `make down`) or change the ports (README, Configuration)."
        )


def refuse_a_changed_platform(layout: Layout) -> None:
    """A running stack keeps the programs it started with: TASKMANAGERS raised, or LLM_CONSUMERS
    changed, since then needs a restart (`make up` would otherwise start what the old config has)."""
    configured = configured_processes(layout)  # one `supervisorctl status`, not one per program
    programs = {program_of(name) for name in configured}
    missing = [name for name in platform_programs(layout) if name not in programs]
    if missing:
        raise SystemExit(
            f"[stack] the running stack has no {', '.join(missing)} (TASKMANAGERS={layout.taskmanagers} now): "
            "`make down` first, then `make up` again"
        )
    running = llm_consumers_among(configured)
    if running != layout.llm_consumers:
        raise SystemExit(
            f"[stack] the running stack has {running} LLM consumers (LLM_CONSUMERS={layout.llm_consumers} now): "
            "`make down` first, then `make up` again"
        )


def warn_of_idle_llm_consumers(layout: Layout) -> None:
    """More LLM consumers than partitions of the topic they read: say so (README, "Scaling out")."""
    try:
        partitions = topic_partitions(layout, topics.QUESTIONS_PENDING)
    except Exception as exc:  # noqa: BLE001 - a warning must never stop `make up`
        log(f"could not count the partitions of {topics.QUESTIONS_PENDING} ({exc}); idle consumers not checked")
        return
    warning = idle_llm_consumers_warning(layout.llm_consumers, partitions)
    if warning:
        log(f"WARNING: {warning}")


def up(layout: Layout, platform_only: bool) -> None:
    for sub in ("logs", "run"):
        layout.path(sub).mkdir(parents=True, exist_ok=True)
    if supervisord_pid(layout) is None:
        ensure_ports_free(layout)
        # Decided before anything starts: once started, the embedded server answers there itself.
        embedded_llm = not ollama_answers(layout.ollama_url)
        initialise_storage(layout)
        conf = write_supervisor_config(layout, embedded_llm)
        log(f"starting supervisord ({conf})")
        subprocess.run([str(VENV / "bin" / "supervisord"), "-c", str(conf)], check=True, env=os.environ)
        wait_for(
            "supervisord", lambda: supervisorctl(layout, "status", check=False).returncode in (0, 3), 20, layout=layout
        )
    else:
        refuse_a_changed_platform(layout)
    start_programs(layout, platform_programs(layout))
    wait_for("Kafka", lambda: kafka_ready(layout), 120, layout=layout)
    wait_for("PostgreSQL", lambda: postgres_ready(layout), 60, layout=layout)
    wait_for("Redis", lambda: redis_ready(layout), 30, layout=layout)
    init_topics(layout)
    init_database(layout)
    wait_for("Flink cluster", lambda: flink_ready(layout), 120, layout=layout)
    wait_for("Prometheus", lambda: http_ok(f"{layout.prometheus_url}/-/ready"), 60, layout=layout)
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
    warn_of_idle_llm_consumers(layout)
    start_programs(layout, SERVICES)
    if ScoreValidatorSettings.from_env(layout.env).score_validator_backup_consumer:
        start_programs(layout, [BACKUP_SCORER])
    wait_for(
        "score_validator", lambda: http_ok(f"{layout.score_validator_url}/health"), 240, interval_s=1, layout=layout
    )
    wait_for("storage_service", lambda: http_ok(f"{layout.storage_url}/health"), 60, layout=layout)
    wait_for("Kafka browser", lambda: http_ok(f"{layout.kafka_ui_url}/health"), 60, layout=layout)
    wait_for("dashboard", lambda: http_ok(f"{layout.dashboard_url}/health"), 60, layout=layout)
    deploy_flink_job(layout)
    print_summary(layout, platform_only=False)


def embedded_llm_configured(layout: Layout) -> bool:
    return layout.path("run", "embedded-llm").exists()


def print_summary(layout: Layout, platform_only: bool) -> None:
    lines = [
        f"Kafka            {layout.kafka_bootstrap}",
        f"PostgreSQL       {masked(layout.database_url)}",
        f"Redis            {masked(layout.redis_url)}  (passwords: {layout.path('secrets')})",
        f"Flink dashboard  {layout.flink_rest_url}",
        f"Prometheus       {layout.prometheus_url}  (scrapes every {SCRAPE_INTERVAL}: /targets; "
        f"config {layout.path('prometheus', 'prometheus.yml')})",
    ]
    if not platform_only:
        lines += [
            f"storage_service  {layout.storage_url}  (POST /query, GET /status/<id>, /metrics, /health)",
            f"score_validator  {layout.score_validator_url}  (GET /health, POST /score, POST /score/batch)",
            f"Kafka browser    {layout.kafka_ui_url}  (topics, consumer lag, latest messages)",
            f"dashboard        {layout.dashboard_url}  (live charts, latest outcomes, question trace)",
            f"LLM (Ollama API) {layout.ollama_url}",
            f"LLM consumers    {layout.llm_consumers} (LLM_CONSUMERS; metrics on "
            f"{', '.join(f':{port}' for port in llm_consumer_metrics_ports(layout.llm_consumers).values())})",
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


def status(layout: Layout) -> None:
    if supervisord_pid(layout) is None:
        log("not running")
        return
    print(supervisorctl(layout, "status", check=False).stdout, end="")
    print(f"{'flink job':<33}{flink_job_status(layout)}")
    print(f"{'prometheus scrapes':<33}{scrape_health(layout)}")
    print(f"{'llm-consumer group':<33}{llm_consumer_group_health(layout)}")


def llm_consumer_group_health(layout: Layout) -> str:
    """How many LLM consumers the broker has in their group, of how many the stack runs."""
    try:
        members = group_member_count(layout, topics.GROUP_LLM_CONSUMER)
        partitions = topic_partitions(layout, topics.QUESTIONS_PENDING)
    except Exception as exc:  # noqa: BLE001 - a status line, whatever Kafka's client raised
        return f"UNKNOWN (Kafka unreachable: {exc})"
    return consumer_group_summary(members, llm_consumers_among(configured_processes(layout)), partitions)


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
