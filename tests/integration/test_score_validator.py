"""score_validator's HTTP API on the real BERTScore model."""

import requests

PAIR = {"candidate": "Santiago is the capital of Chile.", "reference": "The capital of Chile is Santiago."}
UNRELATED = {"candidate": "Bananas are a yellow fruit.", "reference": "The capital of Chile is Santiago."}


def test_health(stack):
    body = requests.get(f"{stack.scorer_url}/health", timeout=5).json()
    assert body["status"] == "healthy" and body["service"] == "score-validator"


def test_single_score_separates_on_topic_from_off_topic(stack):
    good = requests.post(f"{stack.scorer_url}/score", json=PAIR, timeout=30).json()
    bad = requests.post(f"{stack.scorer_url}/score", json=UNRELATED, timeout=30).json()
    assert set(good) >= {"precision", "recall", "f1", "model"}
    assert good["f1"] >= 0.75 > bad["f1"]


def test_batch_scores_match_single_scores(stack):
    batch = requests.post(f"{stack.scorer_url}/score/batch", json={"pairs": [UNRELATED, PAIR]}, timeout=30).json()
    single = requests.post(f"{stack.scorer_url}/score", json=PAIR, timeout=30).json()
    assert len(batch["scores"]) == 2
    assert abs(batch["scores"][1]["f1"] - single["f1"]) < 1e-6


def test_bad_requests_get_json_errors(stack):
    assert requests.post(f"{stack.scorer_url}/score", data="x", timeout=5).status_code == 415
    resp = requests.post(f"{stack.scorer_url}/score", json={"candidate": 3, "reference": "r"}, timeout=5)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_field"
    resp = requests.post(f"{stack.scorer_url}/score/batch", json={"pairs": "nope"}, timeout=5)
    assert resp.status_code == 400
