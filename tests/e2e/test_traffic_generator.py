"""The traffic generator against the running stack: every request answered, repeats hit the cache."""

import csv
import json
from collections import Counter

import psycopg
import requests

import redis
from common.messages import question_id_for
from tests.conftest import unique
from tests.fake_ollama import Answer
from traffic_generator.__main__ import main

REFERENCE = "The capital of Chile is Santiago."
GOOD = "Santiago is the capital of Chile."


def test_replays_csv_and_waits_for_outcomes(stack, fake_llm, tmp_path):
    fake_llm.default_answer = "I do not know."
    csv = tmp_path / "q.csv"
    rows = [f'"4","Traffic question number {i} {tmp_path.name}?","","An answer {i}."' for i in range(4)]
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "summary.json"
    code = main(
        [
            "--csv",
            str(csv),
            "--url",
            stack.storage_url,
            "--count",
            "8",
            "--rate",
            "20",
            "--distribution",
            "constant",
            "--repeat-ratio",
            "0.5",
            "--seed",
            "3",
            "--wait",
            "120",
            "--json",
            str(out),
        ]
    )
    summary = json.loads(out.read_text())
    assert code == 0
    assert summary["sent"] == 8
    assert 1 <= summary["distinct_questions"] <= 4
    assert "still pending" not in summary["final_statuses"]
    assert sum(summary["final_statuses"].values()) == summary["distinct_questions"]
    assert set(summary["counts"]) <= {"pending", "found (cache)", "found (database)"}


def read_requests_csv(path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["sent_at_s", "question_id", "http_status", "source", "latency_ms"]
        return list(reader)


def storage_metrics(stack) -> dict:
    """GET /metrics (it also writes the accesses still counted in memory to PostgreSQL)."""
    return requests.get(f"{stack.storage_url}/metrics", timeout=10).json()


def test_zipf_bursts_are_recorded_per_request_and_match_what_the_server_counted(stack, fake_llm, tmp_path):
    marker = unique("zipf burst")
    fake_llm.script(marker, Answer(GOOD))
    texts = [f"Which city is capital number {i} of Chile? {marker}" for i in range(6)]
    data = tmp_path / "q.csv"
    data.write_text("".join(f'"1","{text}","","{REFERENCE}"\n' for text in texts))
    ids = [question_id_for(text) for text in texts]

    def run(name: str, count: int, seed: int, wait: str) -> tuple[list[dict[str, str]], dict]:
        requests_csv, summary = tmp_path / f"{name}.csv", tmp_path / f"{name}.json"
        args = ["--csv", str(data), "--url", stack.storage_url, "--popularity", "zipf", "--zipf-s", "1.1"]
        args += ["--arrivals", "burst", "--burst-size", "5", "--rate", "20", "--count", str(count)]
        args += ["--seed", str(seed), "--wait", wait, "--requests-csv", str(requests_csv), "--json", str(summary)]
        assert main(args) == 0
        return read_requests_csv(requests_csv), json.loads(summary.read_text())

    before = storage_metrics(stack)
    first, first_summary = run("first", 40, 11, "120")
    assert first_summary["final_statuses"] == {"validated": len({r["question_id"] for r in first})}
    assert first_summary["config"]["popularity"] == "zipf" and first_summary["config"]["arrivals"] == "burst"
    # Every question is validated and cached now; without its Redis key the top question comes from PostgreSQL.
    redis.Redis.from_url(stack.redis_url).delete(f"answer:{ids[0]}")
    second, second_summary = run("second", 30, 12, "0")
    after = storage_metrics(stack)

    rows = first + second
    assert len(rows) == 70 and all(r["http_status"] in ("200", "202") for r in rows)
    assert {r["question_id"] for r in rows} <= set(ids)
    sources = Counter(r["source"] for r in rows)
    assert first_summary["by_source"]["pending"] >= 1  # the first asks of each question
    assert Counter(r["source"] for r in second) == {s: n for s, n in second_summary["by_source"].items() if n}
    assert {r["source"] for r in second} == {"cache", "database"}  # one database hit, then cached again
    # The sources the generator saw are the lookups the server counted.
    assert after["cache_hits"] - before["cache_hits"] == sources["cache"]
    assert after["cache_misses"] - before["cache_misses"] == sources["database"] + sources["pending"]
    # Every 2xx POST is one access of its question, as PostgreSQL holds them.
    with psycopg.connect(stack.database_url) as conn:
        stored = dict(
            conn.execute(
                "SELECT question_id, access_count FROM questions WHERE question_id = ANY(%s) AND access_count > 0",
                (ids,),
            ).fetchall()
        )
    assert stored == Counter(r["question_id"] for r in rows)
    assert sum(stored.values()) == len(rows)
    assert after["accesses_total"] - before["accesses_total"] == len(rows)
    top = requests.get(f"{stack.storage_url}/status/{ids[0]}", timeout=10).json()
    assert top["access_count"] == stored[ids[0]] == max(stored.values())  # zipf: rank 1 is asked most
    assert top["last_accessed_at"] is not None
    # The top list covers every run the stack's database kept: this run's rank 1 is in it only if it
    # beats the tenth entry; either way the list is ordered and agrees with PostgreSQL on it.
    counts = [entry["access_count"] for entry in after["top_accessed"]]
    assert counts == sorted(counts, reverse=True)
    listed = {entry["question_id"]: entry["access_count"] for entry in after["top_accessed"]}
    if stored[ids[0]] > counts[-1]:
        assert listed[ids[0]] == stored[ids[0]]
