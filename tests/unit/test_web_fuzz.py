"""Property-based fuzzing of both HTTP APIs in-process: thousands of generated requests (malformed,
deeply nested, binary, oversized, NUL characters, lone surrogates, wrong methods and types), and
never a 5xx; every error is JSON {error, message} with a status the OpenAPI description names.

Deterministic (derandomized, no example database), so a failure reproduces on every run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.web import openapi_document, unsafe_text_reason
from tests.unit.web_fakes import scorer_app, storage_app

EXAMPLES_PER_API = 1200
FUZZ = settings(
    max_examples=EXAMPLES_PER_API,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Any code point, surrogates and NUL included: what a client can put in a JSON string.
ANY_TEXT = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4), max_leaves=20
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.api+json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ]
)


@dataclass(frozen=True)
class Api:
    name: str  # docs/openapi/<name>.json
    fields: tuple[str, ...]  # the body fields its operations read
    skip_paths: frozenset[str]  # operations whose answer depends on a real dependency the fakes lack


STORAGE = Api("storage_service", ("question_text", "original_answer"), frozenset({"/health"}))
SCORER = Api("score_validator", ("candidate", "reference", "pairs"), frozenset())


def field_values() -> st.SearchStrategy[Any]:
    readable = st.text(min_size=1, max_size=60)  # no surrogates: the values that should pass
    pair = st.fixed_dictionaries(
        {}, optional={"candidate": readable | JSON_VALUES, "reference": readable | JSON_VALUES}
    )
    return st.one_of(
        readable,
        readable,
        readable,
        readable,
        ANY_TEXT,
        JSON_VALUES,
        st.lists(pair, max_size=5),
        st.lists(pair | JSON_VALUES, max_size=5),
        st.sampled_from(["", "   ", "\u200b", "x" * 4_001, "x" * 20_001]),
    )


def shaped_bodies(api: Api) -> st.SearchStrategy[bytes]:
    """Objects with the API's own field names and hostile values: most reach the handlers."""
    every_field = st.fixed_dictionaries({name: field_values() for name in api.fields})
    some_fields = st.fixed_dictionaries({}, optional={name: field_values() for name in api.fields})
    objects = every_field | every_field | some_fields
    extras = st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=2)
    bodies = st.tuples(objects, extras).map(lambda both: {**both[1], **both[0]})
    return bodies.map(lambda body: json.dumps(body, ensure_ascii=True).encode())


def nested_bodies() -> st.SearchStrategy[bytes]:
    depth = st.integers(min_value=1, max_value=20_000)
    arrays = depth.map(lambda n: ("[" * n + "]" * n).encode())
    objects = depth.map(lambda n: ('{"question_text":' * n + '"x"' + "}" * n).encode())
    unbalanced = depth.map(lambda n: ("[{" * n).encode())
    return arrays | objects | unbalanced


def bodies(api: Api) -> st.SearchStrategy[bytes]:
    shaped = shaped_bodies(api)
    return st.one_of(
        shaped,
        shaped,
        shaped,
        shaped,
        shaped,
        shaped,
        JSON_VALUES.map(lambda value: json.dumps(value, ensure_ascii=True).encode()),
        nested_bodies(),
        st.binary(max_size=200),
        st.sampled_from([b"", b"null", b"NaN", b'{"a": Infinity}', b"1" * 5000, b'"\\ud800"', b'{"\\u0000": 1}']),
        st.integers(min_value=60_000, max_value=70_000).map(lambda n: b'{"question_text": "' + b"x" * n + b'"}'),
    )


def url_for(template: str, draw: st.DrawFn) -> str:
    """Fill {parameters} with any text, sent as percent-encoded UTF-8 (lone surrogates too)."""

    def fill(_match: re.Match[str]) -> str:
        raw = draw(ANY_TEXT | st.text(max_size=200))
        return quote(raw.encode("utf-8", "surrogatepass"), safe="")

    return re.sub(r"\{[^}]+\}", fill, template)


@st.composite
def requests_for(draw: st.DrawFn, api: Api) -> tuple[str, str, dict[str, str], bytes]:
    """Mostly the documented operations with JSON bodies; sometimes anything at all."""
    operations = [
        (path, method.upper())
        for path, methods in openapi_document(api.name)["paths"].items()
        for method in methods
        for _ in range(4 if method == "post" else 1)  # the operations that read a body, more often
        if path not in api.skip_paths
    ]
    if draw(st.integers(0, 9)) < 8:
        template, method = draw(st.sampled_from(operations))
    else:
        template = draw(st.sampled_from([path for path, _ in operations] + ["/", "/nope", "/score/", "/query/x"]))
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    query = draw(st.sampled_from(["", "", "", "", "", "", "", "", "?limit=1", "?x=%00", "?%ED%A0%80=1", "?a=%FF"]))
    content_type = "application/json" if draw(st.integers(0, 9)) < 7 else draw(CONTENT_TYPES)
    headers = {"Content-Type": content_type} if content_type else {}
    return method, url_for(template, draw) + query, headers, draw(bodies(api))


def documented(api: Api, path: str, method: str, status: int) -> bool:
    """Is `status` what the description promises for this request? Unknown routes: 404/405."""
    for template, operations in openapi_document(api.name)["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, unquote(path.split("?")[0], errors="replace")):
            operation = operations.get(method.lower())
            if operation is None:
                return status == 405
            return str(status) in operation["responses"] or status == 400  # a URL it cannot read
    return status in (404, 405)  # unknown path (or a known one with a wrong method)


def check(api: Api, client: Any, request: tuple[str, str, dict[str, str], bytes]) -> None:
    method, url, headers, body = request
    resp = client.open(url, method=method, headers=headers, data=body)
    summary = (method, url[:120], headers, body[:120], resp.status_code, resp.get_data(as_text=True)[:300])
    assert resp.status_code < 500, summary
    assert documented(api, url, method, resp.status_code), summary
    if resp.status_code >= 400:
        assert resp.mimetype == "application/json", summary
        assert set(resp.get_json()) == {"error", "message"}, summary


@pytest.fixture(scope="module")
def storage_client():
    return storage_app()[0].test_client()


@pytest.fixture(scope="module")
def scorer_client():
    return scorer_app()[0].test_client()


@FUZZ
@given(request=requests_for(STORAGE))
def test_storage_api_never_answers_5xx(storage_client, request):
    check(STORAGE, storage_client, request)


@FUZZ
@given(request=requests_for(SCORER))
def test_score_api_never_answers_5xx(scorer_client, request):
    check(SCORER, scorer_client, request)


WELL_FORMED = settings(FUZZ, max_examples=400)


@WELL_FORMED
@given(question=ANY_TEXT | st.text(min_size=1, max_size=300), answer=ANY_TEXT | st.text(min_size=1, max_size=300))
def test_storage_accepts_any_readable_question(storage_client, question, answer):
    """Any two strings: accepted (202) when both are readable and not blank, else a 4xx; never a 5xx."""
    resp = storage_client.post("/query", json={"question_text": question, "original_answer": answer})
    readable = all(unsafe_text_reason(text) is None and text.strip() for text in (question, answer))
    assert resp.status_code == (202 if readable else 400), (question, answer, resp.get_data(as_text=True)[:300])


@WELL_FORMED
@given(pairs=st.lists(st.tuples(ANY_TEXT | st.text(max_size=300), ANY_TEXT | st.text(max_size=300)), max_size=4))
def test_scorer_scores_any_readable_pair(scorer_client, pairs):
    """Any strings, empty ones included: scored (200) when readable, else a 400; never a 5xx."""
    body = {"pairs": [{"candidate": candidate, "reference": reference} for candidate, reference in pairs]}
    resp = scorer_client.post("/score/batch", json=body)
    readable = all(unsafe_text_reason(text) is None for pair in pairs for text in pair)
    assert resp.status_code == (200 if readable else 400), (pairs, resp.get_data(as_text=True)[:300])
    if readable:
        assert len(resp.get_json()["scores"]) == len(pairs)
