"""The Docker fleet, checked without a Docker engine: real parsers and linters, plus consistency
with the native stack (same services, same configuration names)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

STATE = Path(os.environ.get("YAHOO_LLM_STATE_DIR", ROOT / ".state"))
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILES = sorted(ROOT.glob("*/Dockerfile"))
DESIGN_VARIABLES = [
    "KAFKA_BOOTSTRAP_SERVERS",
    "DATABASE_URL",
    "REDIS_URL",
    "OLLAMA_URL",
    "LLM_MODEL",
    "LLM_TIMEOUT_S",
    "SCORE_VALIDATOR_URL",
    "QUALITY_THRESHOLD",
    "MAX_ATTEMPTS",
    "RETRY_OVERLOAD_BASE_DELAY_S",
    "RETRY_OVERLOAD_MAX_RETRIES",
    "RETRY_QUOTA_DELAY_S",
    "RETRY_QUOTA_MAX_RETRIES",
    "BERTSCORE_MODEL",
    "BERTSCORE_NUM_LAYERS",
    "STORAGE_PORT",
    "SCORE_VALIDATOR_PORT",
]


def dotenv() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (ROOT / ".env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def tool(name: str, *candidates: Path) -> str:
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed; scripts/install.sh installs it")
    return found


def test_docker_compose_parses_the_file():
    result = subprocess.run(
        [tool("docker-compose"), "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_dclint_finds_no_errors():
    result = subprocess.run(
        [tool("dclint", STATE / "tools" / "node_modules" / ".bin" / "dclint"), str(COMPOSE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not re.search(r"^\s*\d+:\d+\s+error\s", result.stdout, re.MULTILINE), result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(dockerfile):
    result = subprocess.run(
        [tool("hadolint", STATE / "venv" / "bin" / "hadolint"), str(dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_copy_source_exists_in_the_build_context(dockerfile):
    for line in dockerfile.read_text().splitlines():
        match = re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line.strip())
        if not match:
            continue
        for source in match.group(1).split():
            if source.startswith("--"):
                continue
            assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} does not exist"


def test_every_build_context_and_mounted_file_exists():
    for name, service in compose()["services"].items():
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).exists(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source}"


def test_every_image_is_pinned_in_dotenv():
    env = dotenv()
    for name, service in compose()["services"].items():
        image = service.get("image")
        if image is None:
            assert "build" in service, f"{name} has neither image nor build"
            continue
        match = re.fullmatch(r"\$\{(\w+)\}", image)
        assert match, f"{name}: image {image!r} must come from .env"
        pinned = env[match.group(1)]
        assert ":" in pinned and not pinned.endswith(":latest"), f"{name}: {pinned} is not pinned"
    for key, value in env.items():
        if key.endswith("_IMAGE"):
            assert re.search(r":[\w.-]*\d", value), f"{key}={value} has no concrete version tag"


def test_long_running_services_have_healthchecks_restarts_and_memory_limits():
    services = compose()["services"]
    one_shot = {name for name, s in services.items() if s.get("restart") in ("no", "on-failure:5")}
    for name, service in services.items():
        if name in one_shot:
            continue
        assert "healthcheck" in service, name
        assert service.get("restart") == "unless-stopped", name
        assert service.get("mem_limit"), name


def test_compose_and_native_run_the_same_services():
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    import stack

    native = set(stack.PLATFORM) | set(stack.SERVICES) | {stack.EMBEDDED_LLM, stack.BACKUP_SCORER}
    assert native <= set(compose()["services"]), native - set(compose()["services"])
    assert compose()["services"]["llm-consumer"]["deploy"]["replicas"] == 2


def test_compose_passes_every_design_variable_to_the_pipeline():
    pipeline_env = compose()["x-pipeline-env"]
    assert set(DESIGN_VARIABLES) <= set(pipeline_env), set(DESIGN_VARIABLES) - set(pipeline_env)


def test_every_configuration_name_is_read_by_some_service():
    from flink_job.config import JobSettings
    from llm_consumer.config import LLMConsumerSettings
    from local_llm.config import LocalLLMSettings
    from score_validator.config import ScoreValidatorSettings
    from storage_service.config import StorageSettings

    read = set()
    for settings in (JobSettings, LLMConsumerSettings, LocalLLMSettings, ScoreValidatorSettings, StorageSettings):
        read |= {name.upper() for name in settings.model_fields}
    unread = set(compose()["x-pipeline-env"]) - read
    assert not unread, f"compose sets variables no service reads: {unread}"
