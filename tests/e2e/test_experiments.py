"""`python -m experiments --fast` end to end on the test stack (the scripted LLM answers with each
question's reference answer, so questions validate): a reduced matrix, and the report's numbers
checked against what PostgreSQL and Redis recorded, not only that the files exist."""

from __future__ import annotations

import csv
import json
import time
import uuid
from pathlib import Path

import psycopg

import redis
from common.messages import question_id_for
from experiments.__main__ import main
from tests.fake_ollama import Answer, Fail

BAD = "Bananas are a yellow fruit rich in potassium that grows in tropical countries."
GOOD_COUNT = 9  # answered right at once; then one regenerated, one recovered by a retry, one low quality
MATRIX = """
name = "e2e"
seed = 3
[warmup]
timeout_s = 90
rate_per_s = 20
[traffic]
requests = 60
rate_per_s = 30
burst_size = 5
[[study]]
name = "policies"
popularity = ["zipf:1.2"]
arrivals = ["poisson"]
policies = ["allkeys-lru", "allkeys-lfu"]
cache_sizes = [2]
[[study]]
name = "ttl"
popularity = ["uniform"]
arrivals = ["constant"]
policies = ["allkeys-lru"]
cache_sizes = ["100%"]
ttls_s = [1]
"""


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def scripted_dataset(fake_llm, folder: Path) -> tuple[Path, dict[str, str]]:
    """12 new questions; the fake LLM's script decides how each ends. Returns the CSV and the
    question id of each special case."""
    tag = uuid.uuid4().hex[:8]
    rows, special = [], {}
    for i in range(GOOD_COUNT + 3):
        marker = f"[{tag}-{i:02d}]"
        question = f"Experiment question number {i}, about topic {i * 7} {marker}?"
        reference = f"The answer to experiment question {i} is that topic {i * 7} has {i + 3} parts."
        if i < GOOD_COUNT:
            fake_llm.script(marker, Answer(reference))
        elif i == GOOD_COUNT:
            special["regenerated"] = question_id_for(question)
            fake_llm.script(marker, Answer(BAD), Answer(reference))
        elif i == GOOD_COUNT + 1:
            special["recovered"] = question_id_for(question)
            fake_llm.script(marker, Fail(503), Answer(reference))
        else:
            special["low_quality"] = question_id_for(question)
            fake_llm.script(marker, Answer(BAD))
        rows.append([4, question, "", reference])
    path = folder / "questions.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL).writerows(rows)
    special["all"] = ",".join(question_id_for(r[1]) for r in rows)
    return path, special


def test_reduced_matrix_report_matches_postgres_and_redis(stack, fake_llm, tmp_path):
    dataset, special = scripted_dataset(fake_llm, tmp_path)
    ids = special["all"].split(",")
    matrix = tmp_path / "e2e.toml"
    matrix.write_text(MATRIX)
    r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    touched = ("maxmemory", "maxmemory-policy", "notify-keyspace-events")
    config_before = {name: r.config_get(name)[name] for name in touched}

    started = time.monotonic()
    out = tmp_path / "reports"
    argv = ["--matrix", str(matrix), "--stack", "test-stack", "--csv", str(dataset), "--out", str(out), "--fast"]
    assert main(argv, env=stack.env) == 0
    assert time.monotonic() - started < 180
    [folder] = list(out.iterdir())

    # Redis is left as it was found.
    assert {name: r.config_get(name)[name] for name in touched} == config_before

    # Cache cells: the requests' own sources agree with Redis' INFO counters, evictions happened
    # in the small cache, and the TTL cell's answers expired.
    cells = {row["study"]: row for row in read_csv(folder / "cells.csv") if row["policy"] == "allkeys-lru"}
    rows = read_csv(folder / "cells.csv")
    assert len(rows) == 3
    for row in rows:
        assert int(row["hits"]) == int(row["redis_hits"]), row["cell"]
        assert int(row["misses"]) + int(row["pending"]) == int(row["redis_misses"]), row["cell"]
        assert int(row["hits"]) + int(row["misses"]) == int(row["requests"]) == 60, row["cell"]
        assert int(row["working_set"]) == GOOD_COUNT + 2
        assert int(row["oom_rejections"]) == 0, row  # the cache was sized so Redis could always evict
        requests = read_csv(folder / "requests" / f"{row['cell']}.csv")
        assert sum(1 for q in requests if q["source"] == "cache") == int(row["hits"])
    for row in rows:
        if row["study"] == "policies":
            assert int(row["cache_answers"]) == 2
            # the calibration filled the cache until Redis held the 2 answers asked for
            assert abs(int(row["calibration_held"].split(";")[-1]) - 2) <= 1, row
            assert int(row["evicted_keys"]) > 0, row
            assert 0 < float(row["hit_rate"]) < 1
            # Redis held about 2 answers (client buffers make it wobble by a few), never the working set
            assert float(row["resident_mean"]) <= 2 + 3, row
            assert int(float(row["resident_max"])) < int(row["working_set"]), row
    assert int(cells["ttl"]["expired_keys"]) > 0
    assert int(cells["ttl"]["ttl_expires_applied"]) > 0

    # Pipeline: the report's counts are PostgreSQL's.
    config = json.loads((folder / "config.json").read_text())
    pipeline = config["pipeline"]
    with psycopg.connect(stack.database_url) as conn:
        by_status = dict(
            conn.execute(
                "SELECT status, count(*) FROM questions WHERE question_id = ANY(%s) GROUP BY status", (ids,)
            ).fetchall()
        )
        calls = conn.execute("SELECT count(*) FROM llm_calls WHERE question_id = ANY(%s)", (ids,)).fetchone()[0]
    assert by_status == {"validated": GOOD_COUNT + 2, "low_quality": 1}
    assert pipeline["statuses"]["validated"] == by_status["validated"]
    assert pipeline["llm_calls"] == calls == GOOD_COUNT + 2 + 2 + 3
    assert pipeline["recovered_by_retries"] == 1
    assert pipeline["regenerated"] == 2  # the regenerated one and the low-quality one
    per_question = {row["question_id"]: row for row in read_csv(folder / "pipeline.csv")}
    assert per_question[special["recovered"]]["recovered_by_retry"] == "True"
    regenerated = per_question[special["regenerated"]]
    assert float(regenerated["first_f1"]) < 0.75 <= float(regenerated["best_f1"])
    assert int(per_question[special["low_quality"]]["llm_calls"]) == 3
    assert pipeline["post_to_terminal_s"]["n"] == len(ids)

    # The sweep at the stack's threshold is the validated share PostgreSQL holds.
    sweep = {float(row["threshold"]): float(row["validated_share"]) for row in read_csv(folder / "threshold_sweep.csv")}
    assert sweep[0.75] == by_status["validated"] / len(ids)
    assert sweep[0.6] >= sweep[0.75] >= sweep[0.9]
    waits = {row["topic"]: row for row in read_csv(folder / "topic_waits.csv")}
    assert int(waits["questions-pending"]["n"]) >= len(ids)
    assert int(waits["errors-overload"]["n"]) == 1
    # every LLM answer was scored (9 + 2 + 1 + 3 answers); Flink's outputs are dated by their updated_at
    assert int(waits["llm-responses-success"]["n"]) == GOOD_COUNT + 2 + 1 + 3
    assert float(waits["llm-responses-success"]["p50"]) > 0
    assert int(waits["validated-responses"]["n"]) == GOOD_COUNT + 2
    assert float(waits["validated-responses"]["p50"]) > 0

    # The report shows every figure, inline in the HTML.
    markdown = (folder / "report.md").read_text()
    html = (folder / "report.html").read_text()
    for figure in ("hit_rate_by_policy", "latency_cdf", "threshold_sweep", "f1_regeneration", "topic_waits"):
        assert (folder / f"{figure}.png").exists() and f"]({figure}.png)" in markdown
    assert html.count("data:image/png;base64,") >= 5
    assert config["versions"]["redis"]["redis_version"]
