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


NOTHING_TO_COMPARE = ["", " ", "\n\t", "\u3000", "\u200b", "\x01", "[CLS]"]


def test_a_side_with_nothing_to_compare_scores_zero_without_error(stack):
    for empty in NOTHING_TO_COMPARE:
        for pair in (
            {"candidate": empty, "reference": PAIR["reference"]},
            {"candidate": PAIR["candidate"], "reference": empty},
        ):
            resp = requests.post(f"{stack.scorer_url}/score", json=pair, timeout=30)
            assert resp.status_code == 200, (pair, resp.text)
            assert {k: resp.json()[k] for k in ("precision", "recall", "f1")} == {
                "precision": 0.0,
                "recall": 0.0,
                "f1": 0.0,
            }


def test_both_sides_empty_score_zero_not_one(stack):
    body = requests.post(f"{stack.scorer_url}/score", json={"candidate": "", "reference": ""}, timeout=30).json()
    assert body["f1"] == 0.0


def test_batch_mixes_empty_and_real_pairs_in_order(stack):
    pairs = [PAIR, {"candidate": "", "reference": "x"}, UNRELATED]
    scores = requests.post(f"{stack.scorer_url}/score/batch", json={"pairs": pairs}, timeout=30).json()["scores"]
    single = requests.post(f"{stack.scorer_url}/score", json=PAIR, timeout=30).json()
    assert [s["f1"] == 0.0 for s in scores] == [False, True, False]
    assert abs(scores[0]["f1"] - single["f1"]) < 1e-6


def test_odd_text_gets_a_score_or_a_4xx_never_a_5xx(stack):
    odd = ["🙂", "\u202e abc", "\x7f", "\U0010ffff", "\u0301", "[PAD]", "é" * 20_000, "word " * 4000, "\x00", "\ud800"]
    for text in odd:
        for pair in ({"candidate": text, "reference": "r"}, {"candidate": "c", "reference": text}):
            resp = requests.post(f"{stack.scorer_url}/score", json=pair, timeout=60)
            assert resp.status_code < 500, (pair["candidate"][:10], resp.status_code, resp.text[:200])
            assert resp.status_code == 200 or resp.json()["error"]


def test_concurrent_requests_share_model_calls_and_keep_their_own_scores(stack):
    """Eight in flight, as the Flink job sends them: each gets the score it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    candidates = [f"Santiago is the capital of Chile, said speaker {i}." for i in range(24)] + [UNRELATED["candidate"]]
    pairs = [{"candidate": c, "reference": PAIR["reference"]} for c in candidates]
    alone = [requests.post(f"{stack.scorer_url}/score", json=p, timeout=30).json()["f1"] for p in pairs]
    before = batch_size_count(stack)
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: requests.post(f"{stack.scorer_url}/score", json=p, timeout=60), pairs))
    assert all(r.status_code == 200 for r in together)
    assert max(abs(r.json()["f1"] - f1) for r, f1 in zip(together, alone, strict=True)) < 1e-4
    assert batch_size_count(stack) - before < len(pairs)  # fewer model calls than requests


def batch_size_count(stack) -> float:
    text = requests.get(f"{stack.scorer_url}/metrics/prometheus", timeout=5).text
    [line] = [x for x in text.splitlines() if x.startswith("yahoo_score_batch_size_count")]
    return float(line.split()[-1])
