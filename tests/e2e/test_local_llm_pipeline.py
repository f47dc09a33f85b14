"""The pipeline's quality with the real embedded model (issue 12): every question of the sample CSV
through the real test stack (Kafka, Flink, BERTScore, PostgreSQL), each LLM answer a real answer of
SmolLM2-135M on the embedded server (llama.cpp by default; LOCAL_LLM_QUALITY_ENGINE=transformers
measures the fallback).

The test stack's LLM is the suite's scripted one (the session fixture), so the real model's answers
are generated here first, with the prompt and options the consumers send, one per attempt the
pipeline may make, and scripted for the question. Records the validated share, the mean F1 and the
model's seconds per answer in bench-results/local-llm-quality-<engine>.json and .md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import ollama
import psycopg
import pytest
import requests

from common.dataset import SAMPLE_CSV, read_questions
from llm_consumer.clients import build_prompt
from llm_consumer.config import LLMConsumerSettings
from tests.conftest import ROOT, TEST_ENV, terminal, unique, wait_until
from tests.fake_ollama import Answer

PORT = 11438
ENGINE = os.environ.get("LOCAL_LLM_QUALITY_ENGINE", "llamacpp")
ATTEMPTS = int(TEST_ENV["MAX_ATTEMPTS"])


def consumer_default(name: str):
    """The consumers' own default (TEST_ENV does not change the prompt options)."""
    return LLMConsumerSettings.model_fields[name].default


@pytest.fixture(scope="module")
def real_llm():
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OLLAMA_URL": f"http://127.0.0.1:{PORT}",
        "LOCAL_LLM_ENGINE": ENGINE,
        "OLLAMA_NUM_PARALLEL": "2",
    }
    proc = subprocess.Popen([sys.executable, "-m", "local_llm"], env=env, stdout=subprocess.DEVNULL)

    def up():
        try:
            return requests.get(f"http://127.0.0.1:{PORT}/api/version", timeout=1).json()
        except requests.RequestException:
            assert proc.poll() is None, "local_llm exited"
            return None

    try:
        version = wait_until(up, 240, interval_s=0.5, what="local_llm to load its model")
        assert version["engine"] == ENGINE
        yield ollama.Client(host=f"http://127.0.0.1:{PORT}", timeout=300)
    finally:
        proc.terminate()
        proc.wait(30)


def real_answers(client: ollama.Client, question: str) -> list[tuple[str, float]]:
    """ATTEMPTS answers to the consumers' prompt, as they ask it (sampling: each one differs)."""
    options = {"temperature": consumer_default("llm_temperature"), "num_predict": consumer_default("llm_num_predict")}
    answers = []
    for _ in range(ATTEMPTS):
        reply = client.generate(model="smollm2:135m", prompt=build_prompt(question), options=options)
        answers.append((reply.response, (reply.total_duration or 0) / 1e9))
    return answers


def test_sample_csv_through_the_pipeline_with_real_answers(stack, fake_llm, ask, status_of, real_llm):
    questions = read_questions(SAMPLE_CSV)
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:  # two in flight, as the two consumers call
        generated = list(pool.map(lambda q: real_answers(real_llm, q.question_text), questions))
    generation_wall_s = time.monotonic() - started

    ids = []
    for question, answers in zip(questions, generated, strict=True):
        text = unique(question.question_text)
        fake_llm.script(text, *(Answer(answer) for answer, _ in answers))
        resp = ask(text, question.original_answer)
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["question_id"])
    finals = [terminal(status_of, qid, timeout_s=300) for qid in ids]

    with psycopg.connect(stack.database_url) as conn:
        f1s = [f1 for (f1,) in conn.execute("SELECT f1 FROM attempts WHERE question_id = ANY(%s)", (ids,)).fetchall()]
        scored = {
            answer for (answer,) in conn.execute("SELECT llm_answer FROM attempts WHERE question_id = ANY(%s)", (ids,))
        }
    statuses = [f["status"] for f in finals]
    seconds = [s for answers in generated for _, s in answers]
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "engine": ENGINE,
        "model": "smollm2:135m",
        "questions": len(questions),
        "validated": statuses.count("validated"),
        "low_quality": statuses.count("low_quality"),
        "failed": statuses.count("failed"),
        "validated_share": round(statuses.count("validated") / len(questions), 3),
        "mean_f1_all_attempts": round(sum(f1s) / len(f1s), 3),
        "mean_best_f1": round(sum(f["score"] or 0 for f in finals) / len(finals), 3),
        "mean_attempts": round(sum(f["attempts"] for f in finals) / len(finals), 2),
        "seconds_per_answer": round(sum(seconds) / len(seconds), 2),
        "answers_per_s_two_in_flight": round(len(seconds) / generation_wall_s, 2),
        "quality_threshold": float(TEST_ENV["QUALITY_THRESHOLD"]),
    }
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / f"local-llm-quality-{ENGINE}.json").write_text(json.dumps(report, indent=2))
    lines = [f"# The embedded LLM through the pipeline ({ENGINE}), {report['when']}", ""]
    (out / f"local-llm-quality-{ENGINE}.md").write_text(
        "\n".join(lines + [f"- {k}: {v}" for k, v in report.items()]) + "\n"
    )
    print(f"\n[local-llm quality] {report}")

    # An empty answer is an LLM failure for the consumers: the only way a question may fail here.
    with_empty = sum(any(not answer.strip() for answer, _ in answers) for answers in generated)
    assert statuses.count("failed") <= with_empty, finals
    real = {answer.strip() for answers in generated for answer, _ in answers}
    assert scored <= real, "only the real model's answers were scored"
    assert report["validated"] > 0, report  # some answers of the real model pass the real scorer
    assert len(f1s) == sum(f["attempts"] for f in finals)
