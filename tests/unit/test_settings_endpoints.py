"""The stack's endpoints come from one place (common.settings.StackSettings): the defaults README
lists, and an overridden port that moves everywhere it is used: the services' settings, the native
stack's Layout and generated configs, the tests' fixtures, the command-line tools."""

from __future__ import annotations

import pytest

from common.settings import PROJECT_ROOT, ServiceSettings, StackSettings
from flink_job.config import JobSettings, WatchdogSettings
from llm_consumer.config import LLMConsumerSettings
from local_llm.config import LocalLLMSettings
from score_validator.config import ScoreValidatorSettings
from scripts.platform import config as stack_config
from scripts.platform.layout import Layout
from storage_service.config import StorageSettings
from tests.conftest import stack_endpoints

ENDPOINT_VARIABLES = [
    "KAFKA_BOOTSTRAP_SERVERS",
    "DATABASE_URL",
    "REDIS_URL",
    "REDIS_PASSWORD",
    "BIND_HOST",
    "OLLAMA_URL",
    "STORAGE_PORT",
    "STORAGE_URL",
    "SCORE_VALIDATOR_PORT",
    "SCORE_VALIDATOR_URL",
    "FLINK_REST_PORT",
    "FLINK_REST_URL",
    "KAFKA_UI_PORT",
    "YAHOO_LLM_STATE_DIR",
]


@pytest.fixture
def environment(monkeypatch, tmp_path):
    """Sets variables for this process (the services' settings read them) and returns a Layout of a
    stack given the same environment (scripts/stack.py passes its own on to every process)."""
    for name in ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def apply(**env: str) -> Layout:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return Layout("unit-stack", env, state=tmp_path)

    return apply


def test_defaults_are_the_documented_ones(environment):
    environment()
    settings = StackSettings()
    assert settings.kafka_bootstrap_servers == "localhost:9092"
    assert settings.database_url == "postgresql://yahoo:yahoo@localhost:5432/yahoo_llm"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.redis_password is None
    assert settings.bind_host == "127.0.0.1"
    assert settings.ollama_url == "http://localhost:11434"
    assert (settings.storage_port, settings.storage_url) == (5001, "http://localhost:5001")
    assert (settings.score_validator_port, settings.score_validator_url) == (8000, "http://localhost:8000")
    assert (settings.flink_rest_port, settings.flink_rest_url) == (8081, "http://localhost:8081")
    assert settings.kafka_ui_port == 8080
    assert settings.state_dir == PROJECT_ROOT / ".state"


def test_the_flink_rest_port_moves_everywhere(environment, tmp_path):
    import yaml

    layout = environment(FLINK_REST_PORT="9181")
    url = "http://localhost:9181"
    assert StorageSettings().flink_rest_url == url  # /health asks whether the job runs
    assert ScoreValidatorSettings().flink_rest_url == url  # the backup consumer stands by
    assert WatchdogSettings().flink_rest_url == url
    assert layout.flink_rest_url == url and layout.ports()["flink-rest"] == 9181
    assert stack_endpoints(layout, dict(layout.env)).flink_url == url
    flink = yaml.safe_load((stack_config.write_flink_config(layout) / "config.yaml").read_text())
    assert flink["rest.port"] == 9181


def test_the_storage_port_moves_everywhere(environment):
    from traffic_generator.__main__ import parse_args

    layout = environment(STORAGE_PORT="6101")
    url = "http://localhost:6101"
    assert StorageSettings().storage_port == 6101
    assert ServiceSettings().storage_url == url  # python -m common rerun
    assert parse_args([]).url == url
    assert layout.storage_url == url and layout.ports()["storage-service"] == 6101
    assert stack_endpoints(layout, dict(layout.env)).storage_url == url


def test_the_scorer_port_moves_everywhere_unless_its_url_is_given(environment):
    layout = environment(SCORE_VALIDATOR_PORT="8100")
    assert ScoreValidatorSettings().score_validator_port == 8100
    assert JobSettings().score_validator_url == "http://localhost:8100"
    assert layout.score_validator_url == "http://localhost:8100" and layout.ports()["score-validator"] == 8100
    given = environment(SCORE_VALIDATOR_PORT="8100", SCORE_VALIDATOR_URL="http://scorer:9000")
    assert JobSettings().score_validator_url == given.score_validator_url == "http://scorer:9000"


def test_the_kafka_port_moves_everywhere(environment):
    layout = environment(KAFKA_BOOTSTRAP_SERVERS="localhost:9192,localhost:9194")
    assert ServiceSettings().kafka_port == 9192
    assert layout.kafka_bootstrap == "localhost:9192"
    assert (layout.ports()["kafka"], layout.ports()["kafka-controller"]) == (9192, 9193)
    assert "listeners=PLAINTEXT://127.0.0.1:9192" in stack_config.write_kafka_config(layout).read_text()
    assert stack_endpoints(layout, dict(layout.env)).kafka_bootstrap == "localhost:9192"


def test_redis_postgres_llm_and_browser_endpoints_follow_their_variables(environment):
    layout = environment(
        REDIS_URL="redis://localhost:6390/1",
        REDIS_PASSWORD="pw",
        DATABASE_URL="postgresql://app:secret@localhost:5440/db",
        OLLAMA_URL="http://localhost:11500/",
        KAFKA_UI_PORT="8180",
        BIND_HOST="0.0.0.0",
    )
    assert StorageSettings().redis_url == "redis://localhost:6390/1"
    assert layout.redis_url == "redis://:pw@localhost:6390/1"
    assert layout.ports()["redis"] == 6390 and layout.ports()["postgres"] == 5440 == layout.postgres_port
    assert LLMConsumerSettings().ollama_url == "http://localhost:11500/"
    assert LocalLLMSettings().port == 11500  # the embedded LLM serves where the consumers call
    assert layout.ollama_url == "http://localhost:11500"
    assert ServiceSettings().kafka_ui_port == 8180 and layout.ports()["kafka-ui"] == 8180
    assert ServiceSettings().bind_host == layout.bind_host == "0.0.0.0"


def test_the_state_dir_is_where_the_embedded_llm_caches_its_model(environment, tmp_path):
    environment(YAHOO_LLM_STATE_DIR=str(tmp_path))
    assert LocalLLMSettings().cache_dir == tmp_path / "local-llm" / "smollm2-135m-instruct"


def test_from_env_reads_only_the_environment_it_is_given(monkeypatch):
    monkeypatch.setenv("STORAGE_PORT", "7001")
    monkeypatch.setenv("LLM_TIMEOUT_S", "5")
    assert StackSettings().storage_port == 7001
    assert StackSettings.from_env({}).storage_port == 5001
    assert StackSettings.from_env({"storage_port": "7002"}).storage_url == "http://localhost:7002"
    assert LLMConsumerSettings.from_env({"LLM_TIMEOUT_S": "9"}).llm_timeout_s == 9
    assert LLMConsumerSettings.from_env({}).llm_timeout_s == 120


def test_an_empty_variable_means_the_default(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "")
    monkeypatch.setenv("FLINK_REST_URL", "")
    assert StackSettings().database_url == "postgresql://yahoo:yahoo@localhost:5432/yahoo_llm"
    assert StackSettings().flink_rest_url == "http://localhost:8081"
    assert StackSettings.from_env({"BIND_HOST": "", "SCORE_VALIDATOR_URL": ""}).bind_host == "127.0.0.1"
