from pathlib import Path

from common.settings import PipelineSettings
from llm_consumer.clients import build_prompt

ROOT = Path(__file__).resolve().parents[2]


def test_prompt_carries_the_question_only():
    prompt = build_prompt("  What is the capital of Chile? ")
    assert "What is the capital of Chile?" in prompt


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("QUALITY_THRESHOLD", "0.8")
    monkeypatch.setenv("RETRY_OVERLOAD_BASE_DELAY_S", "2")
    settings = PipelineSettings()
    assert settings.quality_threshold == 0.8
    assert settings.overload_policy.delay_s(3) == 16


def test_design_defaults(monkeypatch):
    for var in (
        "QUALITY_THRESHOLD",
        "MAX_ATTEMPTS",
        "RETRY_OVERLOAD_BASE_DELAY_S",
        "RETRY_QUOTA_DELAY_S",
        "KAFKA_BOOTSTRAP_SERVERS",
    ):
        monkeypatch.delenv(var, raising=False)
    settings = PipelineSettings()
    assert (settings.quality_threshold, settings.max_attempts) == (0.75, 3)
    assert settings.overload_policy.delay_s(0) == 5 and settings.quota_policy.delay_s(4) == 60
    assert settings.kafka_bootstrap_servers == "localhost:9092"


def test_flink_version_is_pinned_once():
    env = dict(
        line.split("=", 1)
        for line in (ROOT / ".env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    assert pins["apache-flink"] == env["FLINK_VERSION"]
    assert env["FLINK_KAFKA_CONNECTOR_VERSION"].endswith("-" + ".".join(env["FLINK_VERSION"].split(".")[:2]))
    assert env["KAFKA_IMAGE"].endswith(":" + env["KAFKA_VERSION"])
    assert env["FLINK_IMAGE"].startswith("flink:" + env["FLINK_VERSION"])
