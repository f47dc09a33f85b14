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
from tests.static.image_contents import FIRST_PARTY, copied_packages, dotenv, imports_of_image, logical_lines, stages

STATE = Path(os.environ.get("YAHOO_LLM_STATE_DIR", ROOT / ".state"))
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILES = sorted(ROOT.glob("*/Dockerfile"))
DOCKERIGNORE = ROOT / ".dockerignore"
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


def copy_sources(dockerfile: Path) -> list[str]:
    return [source for stage in stages(dockerfile) for source in stage.copied]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_copy_source_exists_in_the_build_context(dockerfile):
    sources = copy_sources(dockerfile)
    assert sources, f"{dockerfile}: no COPY read"
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} does not exist"


def dockerignore_patterns(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception `!`, regex) per line of a .dockerignore, in Docker's glob syntax."""
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        patterns.append((exception, re.compile(regex.replace(r"\?", "[^/]"))))
    return patterns


def ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
    verdict = False
    for exception, regex in patterns:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            verdict = not exception
    return verdict


def test_the_dockerignore_rule_follows_exceptions_and_parents():
    patterns = dockerignore_patterns("docs\n!docs/openapi\n**/__pycache__\n*.md\n!README.md\n")
    assert ignored("docs/DESIGN.md", patterns)
    assert not ignored("docs/openapi/storage_service.json", patterns)
    assert ignored("common/__pycache__/x.pyc", patterns)
    assert ignored("CHANGES.md", patterns) and not ignored("README.md", patterns)
    assert not ignored("common/web.py", patterns)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_no_copy_source_is_left_out_by_dockerignore(dockerfile):
    patterns = dockerignore_patterns(DOCKERIGNORE.read_text())
    for source in copy_sources(dockerfile):
        root = ROOT / source
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        sent = [f for f in files if not ignored(str(f.relative_to(ROOT)), patterns)]
        assert sent, f"{dockerfile}: .dockerignore leaves every file of COPY {source} out of the build context"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_first_party_package_the_image_imports_is_copied(dockerfile):
    imported = {module.split(".")[0] for module in imports_of_image(dockerfile)} & FIRST_PARTY
    missing = imported - copied_packages(dockerfile)
    assert not missing, f"{dockerfile.parent.name}'s code imports {missing}, which its Dockerfile does not COPY"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_arg_defaults_are_the_dotenv_versions(dockerfile):
    """A plain `docker build` gets the images and versions compose passes from .env."""
    env = dotenv()
    for line in logical_lines(dockerfile.read_text()):
        name, _, default = line.removeprefix("ARG ").partition("=")
        if line.startswith("ARG ") and name in env:
            assert default == env[name], f"{dockerfile}: ARG {name}={default}, .env says {env[name]}"


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
