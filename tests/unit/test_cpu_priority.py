"""The pipeline's workers run niced so that the latency path answers first on busy cores."""

from __future__ import annotations

from scripts.platform.processes import LATENCY_PATH, cpu_nice
from tests.unit.test_stack_config import full_config, layout_for  # noqa: F401 - layout_for is a fixture


def nice_of(command: str) -> int:
    words = command.split()
    return int(words[2]) if words[:2] == ["nice", "-n"] else 0


def test_the_latency_path_keeps_priority_and_workers_get_worker_nice():
    assert cpu_nice("storage-service", 5) == 0 and cpu_nice("postgres", 5) == 0
    assert cpu_nice("llm-consumer-3", 5) == 5 and cpu_nice("flink-taskmanager-2", 7) == 7
    assert cpu_nice("score-validator", 0) == 0  # WORKER_NICE=0: everyone equal


def test_the_written_config_nices_every_worker_and_nothing_on_the_latency_path(layout_for):  # noqa: F811
    programs = full_config(layout_for(WORKER_NICE="6", TASKMANAGERS="2"))
    niced = {name for name, process in programs.items() if nice_of(process.command) == 6}
    assert {"llm-consumer-0", "retry-overload-consumer", "score-validator", "flink-taskmanager-2"} <= niced
    assert not niced & LATENCY_PATH
    assert set(programs) - niced == {name for name in programs if name in LATENCY_PATH}


def test_worker_nice_zero_writes_plain_commands(layout_for):  # noqa: F811
    programs = full_config(layout_for(WORKER_NICE="0"))
    assert all(nice_of(process.command) == 0 for process in programs.values())
