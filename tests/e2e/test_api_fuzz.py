"""The in-process fuzzing of tests/unit/test_web_fuzz.py, against the running services: the real
PostgreSQL, Kafka, Redis and BERTScore model behind the same generated requests. No 5xx."""

from __future__ import annotations

from dataclasses import replace

import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from common.web import unsafe_text_reason
from tests.unit.test_web_fuzz import ANY_TEXT, FUZZ, SCORER, STORAGE, Api, documented, requests_for

OVER_HTTP = settings(FUZZ, max_examples=300)
# The real /health answers for itself here: nothing is skipped.
LIVE_STORAGE, LIVE_SCORER = replace(STORAGE, skip_paths=frozenset()), replace(SCORER, skip_paths=frozenset())


def send(base_url: str, api: Api, request: tuple[str, str, dict[str, str], bytes]) -> requests.Response:
    method, url, headers, body = request
    resp = requests.request(method, base_url + url, headers=headers, data=body, timeout=30, allow_redirects=False)
    summary = (method, url[:120], headers, body[:120], resp.status_code, resp.text[:300])
    assert resp.status_code < 500, summary
    assert documented(api, url, method, resp.status_code), summary
    if resp.status_code >= 400:
        assert resp.headers["Content-Type"].startswith("application/json"), summary
        assert set(resp.json()) == {"error", "message"}, summary
    return resp


def fuzz_over_http(base_url: str, api: Api) -> None:
    @OVER_HTTP
    @given(request=requests_for(api))
    def fuzz(request):
        send(base_url, api, request)

    fuzz()


def test_storage_api_never_answers_5xx(stack):
    fuzz_over_http(stack.storage_url, LIVE_STORAGE)


def test_score_api_never_answers_5xx(stack):
    fuzz_over_http(stack.scorer_url, LIVE_SCORER)


def test_the_model_scores_any_readable_text(stack):
    """Empty strings, emoji, scripts the tokenizer does not know, control characters: a score, not a 500."""

    @settings(FUZZ, max_examples=150)
    @given(candidate=ANY_TEXT | st.text(max_size=200), reference=ANY_TEXT | st.text(max_size=200))
    def fuzz(candidate, reference):
        resp = requests.post(
            f"{stack.scorer_url}/score", json={"candidate": candidate, "reference": reference}, timeout=60
        )
        readable = unsafe_text_reason(candidate) is None and unsafe_text_reason(reference) is None
        assert resp.status_code == (200 if readable else 400), (candidate, reference, resp.text[:300])
        if readable:
            assert -1.5 <= resp.json()["f1"] <= 1.5  # rescaled scores may leave [0, 1] a little

    fuzz()
