"""The traffic generator against the running stack: every request answered, repeats hit the cache."""

import json

from traffic_generator.__main__ import main


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
