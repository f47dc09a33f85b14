"""One native stack: where it keeps its state and the endpoints it serves, from StackSettings.

Its processes get `Layout.env` (the caller's environment), so the settings are read from that very
environment: the stack, its processes and the tests' fixtures agree on every port and URL.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from common.settings import PROJECT_ROOT, StackSettings

ROOT = PROJECT_ROOT
# The venv and jars the stack runs with (scripts/install.sh puts them there); each stack's data is
# in a folder of its own under the same state dir.
STATE = StackSettings().state_dir
VENV = STATE / "venv"
PYTHON = VENV / "bin" / "python"


def log(message: str) -> None:
    print(f"[stack] {message}", flush=True)


def running_as_root() -> bool:
    return os.geteuid() == 0


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
    """Where one stack keeps its state, and its endpoints: StackSettings as its processes read them
    from `env`. `state` is the folder holding every stack's (tests: a temporary one)."""

    name: str
    env: Mapping[str, str]
    state: Path = field(default=STATE)

    @cached_property
    def settings(self) -> StackSettings:
        return StackSettings.from_env(self.env)

    @property
    def home(self) -> Path:
        return self.state / self.name

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
    def taskmanagers(self) -> int:
        return self.settings.taskmanagers

    @property
    def llm_consumers(self) -> int:
        return self.settings.llm_consumers

    @property
    def bind_host(self) -> str:
        """Where every port of the stack listens: loopback unless BIND_HOST says otherwise."""
        return self.settings.bind_host

    @property
    def llm_timeout_s(self) -> float:
        from llm_consumer.config import LLMConsumerSettings

        return LLMConsumerSettings.from_env(self.env).llm_timeout_s

    @property
    def postgres_superuser_password(self) -> str:
        return self.secret("postgres-superuser")

    @property
    def kafka_port(self) -> int:
        return self.settings.kafka_port

    @property
    def kafka_bootstrap(self) -> str:
        return f"localhost:{self.kafka_port}"

    @property
    def database_url(self) -> str:
        return self.settings.database_url

    @property
    def postgres_port(self) -> int:
        return urlparse(self.database_url).port or 5432

    @property
    def redis_port(self) -> int:
        return urlparse(self.settings.redis_url).port or 6379

    @property
    def redis_password(self) -> str:
        """The password in REDIS_URL, else REDIS_PASSWORD, else one generated for this stack."""
        in_url = urlparse(self.settings.redis_url).password
        return unquote(in_url) if in_url else self.settings.redis_password or self.secret("redis")

    @property
    def redis_url(self) -> str:
        """REDIS_URL as every process gets it: with the password."""
        return with_password(self.settings.redis_url, self.redis_password)

    @property
    def flink_rest_port(self) -> int:
        return self.settings.flink_rest_port

    @property
    def flink_rest_url(self) -> str:
        """The stack's own Flink cluster (it runs on this machine)."""
        return f"http://localhost:{self.flink_rest_port}"

    @property
    def storage_port(self) -> int:
        return self.settings.storage_port

    @property
    def storage_url(self) -> str:
        return f"http://localhost:{self.storage_port}"

    @property
    def scorer_port(self) -> int:
        return self.settings.score_validator_port

    @property
    def score_validator_url(self) -> str:
        return self.settings.score_validator_url

    @property
    def kafka_ui_port(self) -> int:
        return self.settings.kafka_ui_port

    @property
    def kafka_ui_url(self) -> str:
        return f"http://localhost:{self.kafka_ui_port}"

    @property
    def ollama_url(self) -> str:
        return self.settings.ollama_url.rstrip("/")

    @property
    def prometheus_port(self) -> int:
        return self.settings.prometheus_port

    @property
    def prometheus_url(self) -> str:
        """The stack's own Prometheus (it runs on this machine)."""
        return f"http://localhost:{self.prometheus_port}"

    @property
    def dashboard_port(self) -> int:
        return self.settings.dashboard_port

    @property
    def dashboard_url(self) -> str:
        return f"http://localhost:{self.dashboard_port}"

    def ports(self) -> dict[str, int]:
        """Every port a running stack listens on, by what listens there."""
        from scripts.platform.observability import metrics_ports  # imports this module

        return {
            "kafka": self.kafka_port,
            "kafka-controller": self.kafka_port + 1,
            "postgres": self.postgres_port,
            "redis": self.redis_port,
            "flink-rest": self.flink_rest_port,
            "storage-service": self.storage_port,
            "score-validator": self.scorer_port,
            "kafka-ui": self.kafka_ui_port,
            "prometheus": self.prometheus_port,
            "dashboard": self.dashboard_port,
            **{f"{name} metrics": port for name, port in metrics_ports(self.taskmanagers, self.llm_consumers).items()},
        }
