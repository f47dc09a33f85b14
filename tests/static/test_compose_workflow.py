"""The compose workflow (.github/workflows/compose.yml), checked where no Docker engine runs:
actionlint (with shellcheck over every `run:` block) finds nothing, the workflow agrees with
docker-compose.yml, and the checks it runs (scripts/compose_check.py) behave, against small HTTP fakes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

import pytest
import yaml

from common.flink_rest import SCORE_JOB_NAME
from common.topics import ALL_TOPICS
from tests.conftest import ROOT
from tests.fakes import reply_json

sys.path.insert(0, str(ROOT / "scripts"))
import compose_check

STATE = Path(os.environ.get("YAHOO_LLM_STATE_DIR", ROOT / ".state"))
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
COMPOSE_WORKFLOW = ROOT / ".github" / "workflows" / "compose.yml"


def actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    binary = STATE / "tools" / "bin" / "actionlint"
    if not binary.exists():
        pytest.fail("actionlint is not installed; scripts/install.sh builds it")
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck is not installed (scripts/install.sh): actionlint would skip every run: block")
    return subprocess.run(
        [str(binary), "-no-color", *map(str, paths)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def compose_services() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def workflow() -> dict:
    return yaml.safe_load(COMPOSE_WORKFLOW.read_text())


def test_actionlint_finds_nothing_in_the_workflows():
    assert WORKFLOWS, "no workflow to lint"
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_actionlint_reports_a_broken_workflow(tmp_path):
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - run: echo ${{ github.nope }} $UNQUOTED_VAR\n"
        "      - run: cd $DIR && ls\n"
    )
    result = actionlint(broken)
    assert result.returncode == 1
    assert "shellcheck" in result.stdout, "shellcheck did not run on the run: block"


def test_the_workflow_uses_profiles_and_an_llm_the_compose_file_has():
    env = workflow()["env"]
    services = compose_services()
    profiles = {p for service in services.values() for p in service.get("profiles", [])}
    assert set(env["COMPOSE_PROFILES"].split(",")) <= profiles
    llm_host = urlparse(env["OLLAMA_URL"]).hostname
    assert llm_host in services and set(services[llm_host]["profiles"]) <= set(env["COMPOSE_PROFILES"].split(","))


def test_the_workflow_always_takes_the_fleet_down_with_its_volumes():
    steps = workflow()["jobs"]["fleet"]["steps"]
    last = steps[-1]
    assert last.get("if") == "always()" and "down --volumes" in last["run"]
    assert any(step.get("if") == "failure()" and "logs" in step["run"] for step in steps)


def test_the_seed_example_is_the_smoke_tests():
    from tests.smoke.test_make_up import SEED_EXAMPLE

    assert compose_check.SEED_EXAMPLE == SEED_EXAMPLE


def test_wait_set_keeps_long_running_and_adopted_one_shots_only():
    services = {
        "db": {"restart": "unless-stopped"},
        "init": {"restart": "no"},
        "app": {"restart": "unless-stopped", "depends_on": {"init": {"condition": "service_completed_successfully"}}},
        "deploy": {"restart": "on-failure:5", "depends_on": {"db": {"condition": "service_healthy"}}},
        "plain": {},
    }
    assert compose_check.wait_set(services) == ["app", "db", "init"]


def test_wait_set_of_the_default_fleet_holds_every_pipeline_service():
    default = {name: s for name, s in compose_services().items() if not s.get("profiles")}
    waited = set(compose_check.wait_set(default))
    assert {"kafka", "kafka-init", "storage-service", "llm-consumer", "score-validator", "flink-jobmanager"} <= waited
    for name in set(default) - waited:
        assert compose_check.is_one_shot(default[name]), f"{name} is long-running yet not waited for"


def test_missing_topics_names_what_the_broker_lacks():
    assert compose_check.missing_topics(f"{t}\n" for t in ALL_TOPICS) == []
    listed = [f"{t}\n" for t in ALL_TOPICS if t != "dead-letter"] + ["__consumer_offsets\n"]
    assert compose_check.missing_topics(listed) == ["dead-letter"]


class FakeFleet(BaseHTTPRequestHandler):
    """storage_service's /query and /status, and Flink's /jobs/overview, each answering from a script."""

    statuses: ClassVar[list[str]] = []
    job_states: ClassVar[list[str]] = []
    # Flink's /jobs/<id> and its vertices' /taskmanagers: (vertex, parallelism, TaskManager ids).
    vertices: ClassVar[list[tuple[str, int, list[str]]]] = [("score and route", 1, ["tm-1"])]

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        reply_json(self, 202, {"status": "pending", "question_id": "q1"})

    def do_GET(self) -> None:
        if self.path == "/jobs/overview":
            state = self.job_states.pop(0) if len(self.job_states) > 1 else self.job_states[0]
            reply_json(self, 200, {"jobs": [{"jid": "j1", "name": SCORE_JOB_NAME, "state": state, "start-time": 1}]})
        elif self.path == "/jobs/j1":
            vertices = [{"id": f"v{i}", "name": name, "parallelism": p} for i, (name, p, _) in enumerate(self.vertices)]
            reply_json(self, 200, {"vertices": vertices})
        elif self.path.startswith("/jobs/j1/vertices/"):
            _, _, hosts = self.vertices[int(self.path.split("/")[4].removeprefix("v"))]
            reply_json(self, 200, {"taskmanagers": [{"taskmanager-id": tm} for tm in hosts]})
        else:
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            reply_json(self, 200, {"question_id": "q1", "status": status})


@pytest.fixture
def fleet() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeFleet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_seed_question_polls_until_a_terminal_status(fleet):
    FakeFleet.statuses = ["pending", "pending", "low_quality"]
    final = compose_check.send_seed_question(fleet, deadline_s=10, require_scored=True, interval_s=0.01)
    assert final["status"] == "low_quality"


def test_seed_question_fails_when_failed_but_a_score_was_required(fleet):
    FakeFleet.statuses = ["failed"]
    with pytest.raises(SystemExit, match="not scored"):
        compose_check.send_seed_question(fleet, deadline_s=10, require_scored=True, interval_s=0.01)


def test_seed_question_gives_up_at_the_deadline(fleet):
    FakeFleet.statuses = ["pending"]
    with pytest.raises(SystemExit, match="timed out"):
        compose_check.send_seed_question(fleet, deadline_s=0, require_scored=False, interval_s=0.01)


def test_flink_job_waits_for_running(fleet):
    FakeFleet.job_states = ["CREATED", "INITIALIZING", "RUNNING"]
    compose_check.check_flink_job(fleet, deadline_s=10, interval_s=0.01)
    FakeFleet.job_states = ["FAILED"]
    with pytest.raises(SystemExit, match="RUNNING"):
        compose_check.check_flink_job(fleet, deadline_s=0, interval_s=0.01)


def test_flink_job_waits_until_it_spans_the_parallelism_and_taskmanagers_asked_for(fleet):
    FakeFleet.job_states = ["RUNNING"]
    FakeFleet.vertices = [("source", 2, ["tm-1", "tm-2"]), ("score and route", 2, ["tm-1", "tm-2"])]
    compose_check.check_flink_job(fleet, deadline_s=10, interval_s=0.01, parallelism=2, taskmanagers=2)
    FakeFleet.vertices = [("source", 2, ["tm-1"]), ("score and route", 2, ["tm-1"])]  # both on one TaskManager
    with pytest.raises(SystemExit, match="2 TaskManager"):
        compose_check.check_flink_job(fleet, deadline_s=0, interval_s=0.01, parallelism=2, taskmanagers=2)
    FakeFleet.vertices = [("source", 1, ["tm-1"]), ("score and route", 1, ["tm-2"])]  # spread, yet at 1
    with pytest.raises(SystemExit, match="parallelism 2"):
        compose_check.check_flink_job(fleet, deadline_s=0, interval_s=0.01, parallelism=2, taskmanagers=2)
    FakeFleet.vertices = [("score and route", 1, ["tm-1"])]


def test_prometheus_targets_names_every_target_that_is_not_up():
    targets = [
        {"labels": {"job": "storage", "instance": "storage-service:5001"}, "health": "up"},
        {"labels": {"job": "flink", "instance": "flink-taskmanager:9249"}, "health": "down", "lastError": "refused"},
        {"labels": {"job": "kafka-ui", "instance": "kafka-lag:8080"}, "health": "unknown", "lastError": ""},
    ]
    assert compose_check.targets_down(targets) == [
        "flink/flink-taskmanager:9249 (refused)",
        "kafka-ui/kafka-lag:8080 (unknown)",
    ]
    assert compose_check.targets_down(targets[:1]) == []
