"""Nothing is lost when a consumer process stops or dies in the middle of an LLM call."""

from __future__ import annotations

import os
import signal

from tests.conftest import supervisorctl, terminal, unique, wait_until
from tests.fake_ollama import Answer

GOOD = "Santiago is the capital of Chile."
REFERENCE = "The capital of Chile is Santiago."


def llm_consumer_pids() -> list[int]:
    return [
        int(line.split("pid ")[1].split(",")[0])
        for line in supervisorctl("status", "llm-consumer:*").splitlines()
        if "RUNNING" in line
    ]


def test_sigterm_finishes_the_call_in_hand_then_exits(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(GOOD, delay_s=2.5))
    qid = ask(question, REFERENCE).json()["question_id"]
    wait_until(lambda: fake_llm.calls_for(question), 30, what="the LLM call to start")
    try:
        supervisorctl("stop", "llm-consumer:*")  # SIGTERM, waits for the processes to exit
    finally:
        supervisorctl("start", "llm-consumer:*")
    final = terminal(status_of, qid, 120)
    assert final["status"] == "validated"
    assert len(fake_llm.calls_for(question)) == 1  # finished and committed before exiting: no redelivery


def test_sigkill_mid_call_is_redelivered_after_restart(stack, fake_llm, ask, status_of):
    question = unique("What is the capital of Chile?")
    fake_llm.script(question, Answer(GOOD, delay_s=2.5), Answer(GOOD))
    qid = ask(question, REFERENCE).json()["question_id"]
    wait_until(lambda: fake_llm.calls_for(question), 30, what="the LLM call to start")
    consumers = llm_consumer_pids()
    for pid in consumers:
        os.kill(pid, signal.SIGKILL)  # supervisord restarts them
    final = terminal(status_of, qid, 180)
    assert final["status"] == "validated"
    assert len(fake_llm.calls_for(question)) >= 2  # the uncommitted message was delivered again
    wait_until(lambda: len(llm_consumer_pids()) == len(consumers), 60, what="every consumer back")
