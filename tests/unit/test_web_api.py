"""The HTTP layer of storage_service and score_validator, in-process (Flask's test client on fakes):
every 400/413/415 case answers JSON {error, message} with the status its OpenAPI description names."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.web import MAX_JSON_DEPTH, json_problem, openapi_document, unsafe_text_reason
from tests.unit.web_fakes import scorer_app, storage_app

JSON = {"Content-Type": "application/json"}
GOOD_QUERY = {"question_text": "What is the capital of Chile?", "original_answer": "Santiago"}


@pytest.fixture(scope="module")
def storage():
    app, _repo, _producer = storage_app()
    return app.test_client()


@pytest.fixture(scope="module")
def scorer():
    app, _scorer = scorer_app()
    return app.test_client()


def nested(depth: int) -> str:
    """A JSON object whose innermost value sits `depth` levels down: {"a": {"a": ... 1}}."""
    return '{"a":' * depth + "1" + "}" * depth


def documented_statuses(spec: str, path: str, method: str) -> set[int]:
    return {int(code) for code in openapi_document(spec)["paths"][path][method]["responses"]}


def assert_json_error(resp, status: int, error: str | None = None) -> None:
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:300])
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"error", "message"} and body["message"], body
    assert "Traceback" not in resp.get_data(as_text=True)
    if error is not None:
        assert body["error"] == error, body


# --- the pure checks -------------------------------------------------------------------------


def test_unsafe_text_names_nul_and_lone_surrogates():
    assert unsafe_text_reason("¿Cuál es la capital de Chile? 🇨🇱") is None
    assert unsafe_text_reason("a\x00b") == "a NUL character"
    assert unsafe_text_reason("a\ud800b") == "a lone UTF-16 surrogate"
    assert unsafe_text_reason("\U0001f600") is None  # a real astral character is fine


def test_json_problem_limits_depth_and_finds_unsafe_text_anywhere():
    assert json_problem(json.loads(nested(MAX_JSON_DEPTH - 1))) is None
    deep = json_problem(json.loads(nested(MAX_JSON_DEPTH + 1)))
    assert deep is not None and deep.error == "too_deep"
    found = json_problem({"pairs": [{"candidate": "ok"}, {"candidate": "x\x00"}]})
    assert found is not None and found.error == "invalid_text" and "pairs[1].candidate" in found.message
    key = json_problem({"ok": {"bad\ud800key": 1}})
    assert key is not None and key.error == "invalid_text"
    assert json_problem({"a": [1, 2.5, None, True, "fine"]}) is None


# --- storage_service ------------------------------------------------------------------------

STORAGE_400 = [
    ("malformed", dict(data="{not json", headers=JSON), "invalid_json"),
    ("empty body", dict(data="", headers=JSON), "invalid_json"),
    ("a list", dict(json=["a list"]), "invalid_json"),
    ("a string", dict(json="text"), "invalid_json"),
    ("not UTF-8", dict(data=b'{"question_text": "\xff\xfe"}', headers=JSON), "invalid_json"),
    ("NaN", dict(data='{"question_text": NaN, "original_answer": "x"}', headers=JSON), "invalid_json"),
    ("no fields", dict(json={}), "invalid_field"),
    ("question not a string", dict(json={"question_text": 42, "original_answer": "x"}), "invalid_field"),
    ("question null", dict(json={"question_text": None, "original_answer": "x"}), "invalid_field"),
    ("question blank", dict(json={"question_text": "   ", "original_answer": "x"}), "invalid_field"),
    ("answer not a string", dict(json={"question_text": "ok?", "original_answer": ["x"]}), "invalid_field"),
    ("answer missing", dict(json={"question_text": "ok?"}), "invalid_field"),
    ("answer empty", dict(json={"question_text": "ok?", "original_answer": ""}), "invalid_field"),
    ("NUL in question", dict(json={"question_text": "a\x00b", "original_answer": "x"}), "invalid_text"),
    ("NUL in answer", dict(json={"question_text": "ok?", "original_answer": "x\x00"}), "invalid_text"),
    (
        "lone surrogate",
        dict(data='{"question_text": "\\ud800", "original_answer": "x"}', headers=JSON),
        "invalid_text",
    ),
    ("NUL in a key", dict(json={**GOOD_QUERY, "k\x00": 1}), "invalid_text"),
    ("deep nesting (parser recursion)", dict(data="[" * 30_000 + "]" * 30_000, headers=JSON), "too_deep"),
    ("deep nesting (over the limit)", dict(data=nested(MAX_JSON_DEPTH + 1), headers=JSON), "too_deep"),
    ("deep in a valid query", dict(json={**GOOD_QUERY, "extra": json.loads(nested(40))}), "too_deep"),
]


@pytest.mark.parametrize("kwargs, error", [c[1:] for c in STORAGE_400], ids=[c[0] for c in STORAGE_400])
def test_query_bad_input_is_400(storage, kwargs, error):
    assert 400 in documented_statuses("storage_service", "/query", "post")
    assert_json_error(storage.post("/query", **kwargs), 400, error)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(data="question_text=hi", headers={"Content-Type": "application/x-www-form-urlencoded"}),
        dict(data=json.dumps(GOOD_QUERY), headers={"Content-Type": "text/plain"}),
        dict(data=json.dumps(GOOD_QUERY)),
    ],
    ids=["form", "text/plain", "no content type"],
)
def test_query_not_json_is_415(storage, kwargs):
    assert 415 in documented_statuses("storage_service", "/query", "post")
    assert_json_error(storage.post("/query", **kwargs), 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(json={"question_text": "x" * 4001, "original_answer": "x"}), "field_too_long"),
        (dict(json={"question_text": "ok?", "original_answer": "x" * 20_001}), "field_too_long"),
        (dict(data=json.dumps({"question_text": "x" * 100_000}), headers=JSON), None),
    ],
    ids=["question too long", "answer too long", "body over 64 KiB"],
)
def test_query_too_large_is_413(storage, kwargs, error):
    assert 413 in documented_statuses("storage_service", "/query", "post")
    assert_json_error(storage.post("/query", **kwargs), 413, error)


def test_a_good_query_is_accepted_and_published_once():
    app, repo, producer = storage_app()
    client = app.test_client()
    first = client.post("/query", json=GOOD_QUERY)
    again = client.post("/query", json=GOOD_QUERY)
    assert first.status_code == 202 and first.get_json()["status"] == "pending"
    assert again.status_code == 202 and again.get_json()["question_id"] == first.get_json()["question_id"]
    assert len(producer.sent) == 1 and list(repo.claimed) == [first.get_json()["question_id"]]


@pytest.mark.parametrize(
    "path, status, error",
    [
        ("/status/" + "a" * 129, 400, "invalid_question_id"),
        ("/status/ab%00cd", 400, "invalid_url"),
        ("/status/unknown-id", 404, "not_found"),
    ],
    ids=["id too long", "NUL in id", "unknown id"],
)
def test_status_errors(storage, path, status, error):
    assert status in documented_statuses("storage_service", "/status/{question_id}", "get")
    assert_json_error(storage.get(path), status, error)


def test_unknown_route_and_wrong_method_are_json(storage):
    assert_json_error(storage.get("/nope"), 404)
    assert_json_error(storage.get("/query"), 405)
    assert_json_error(storage.get("/metrics?x=%00"), 400, "invalid_url")


# --- score_validator ------------------------------------------------------------------------

SCORER_400 = [
    ("/score", dict(data="{not json", headers=JSON), "invalid_json"),
    ("/score", dict(json=[1, 2]), "invalid_json"),
    ("/score", dict(data='{"candidate": Infinity}', headers=JSON), "invalid_json"),
    ("/score", dict(json={"candidate": 1, "reference": "x"}), "invalid_field"),
    ("/score", dict(json={"candidate": "x", "reference": {"a": 1}}), "invalid_field"),
    ("/score", dict(json={"candidate": "a\x00", "reference": "x"}), "invalid_text"),
    ("/score", dict(data='{"candidate": "x", "reference": "\\udfff"}', headers=JSON), "invalid_text"),
    ("/score", dict(data="[" * 50_000 + "]" * 50_000, headers=JSON), "too_deep"),
    ("/score/batch", dict(json={}), "invalid_field"),
    ("/score/batch", dict(json={"pairs": "x"}), "invalid_field"),
    ("/score/batch", dict(json={"pairs": [1]}), "invalid_field"),
    ("/score/batch", dict(json={"pairs": [{"candidate": "x\x00"}]}), "invalid_text"),
    ("/score/batch", dict(data=nested(MAX_JSON_DEPTH + 5), headers=JSON), "too_deep"),
]


@pytest.mark.parametrize(
    "path, kwargs, error", SCORER_400, ids=[f"{c[0]} {c[2]} {i}" for i, c in enumerate(SCORER_400)]
)
def test_score_bad_input_is_400(scorer, path, kwargs, error):
    assert 400 in documented_statuses("score_validator", path, "post")
    assert_json_error(scorer.post(path, **kwargs), 400, error)


@pytest.mark.parametrize("path", ["/score", "/score/batch"])
def test_score_not_json_is_415(scorer, path):
    assert 415 in documented_statuses("score_validator", path, "post")
    resp = scorer.post(path, data="candidate=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_json_error(resp, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "path, kwargs, error",
    [
        ("/score", dict(json={"candidate": "x" * 20_001, "reference": "x"}), "field_too_long"),
        ("/score", dict(data=" " * 4_000_001, headers=JSON), "payload_too_large"),
        ("/score/batch", dict(json={"pairs": [{"candidate": "a", "reference": "b"}] * 257}), "too_many_pairs"),
        ("/score/batch", dict(json={"pairs": [{"candidate": "x" * 20_001}]}), "field_too_long"),
    ],
    ids=["text too long", "body over 4 MB", "too many pairs", "text in a batch too long"],
)
def test_score_too_large_is_413(scorer, path, kwargs, error):
    assert 413 in documented_statuses("score_validator", path, "post")
    assert_json_error(scorer.post(path, **kwargs), 413, error)


def test_score_accepts_pairs_and_empty_strings(scorer):
    one = scorer.post("/score", json={"candidate": "", "reference": "Santiago"})
    assert one.status_code == 200 and set(one.get_json()) == {"precision", "recall", "f1", "model"}
    batch = scorer.post("/score/batch", json={"pairs": [{"candidate": "a", "reference": "b"}] * 3})
    assert batch.status_code == 200 and len(batch.get_json()["scores"]) == 3


# --- the OpenAPI descriptions ---------------------------------------------------------------


@pytest.mark.parametrize("client_name, spec", [("storage", "storage_service"), ("scorer", "score_validator")])
def test_openapi_is_served_and_describes_every_route(request, client_name, spec):
    client = request.getfixturevalue(client_name)
    resp = client.get("/openapi.json")
    assert resp.status_code == 200 and resp.get_json() == openapi_document(spec)
    document = resp.get_json()
    assert document["openapi"].startswith("3.")
    app = client.application
    routes = {
        (rule.rule.replace("<", "{").replace(">", "}"), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
        if rule.endpoint != "static"
    }
    described = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert routes == described


def as_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema objects as JSON Schema: `nullable: true` becomes a "null" type."""
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: as_json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") and "type" in node:
        converted["type"] = [node["type"], "null"]
    return converted


def response_schema(spec: str, path: str, method: str, status: int) -> dict:
    """The described JSON schema of one response, resolvable on its own."""
    document = openapi_document(spec)
    response = document["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:
        response = document["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = response["content"]["application/json"]["schema"]
    return as_json_schema({"allOf": [schema], "components": document["components"]})


@pytest.mark.parametrize(
    "client_name, spec, method, path, template, kwargs, status",
    [
        ("storage", "storage_service", "post", "/query", "/query", dict(json=GOOD_QUERY), 202),
        ("storage", "storage_service", "post", "/query", "/query", dict(json={}), 400),
        ("storage", "storage_service", "post", "/query", "/query", dict(data="x"), 415),
        ("storage", "storage_service", "get", "/status/x", "/status/{question_id}", {}, 404),
        ("storage", "storage_service", "get", "/metrics", "/metrics", {}, 200),
        ("scorer", "score_validator", "post", "/score", "/score", dict(json={"candidate": "a"}), 200),
        ("scorer", "score_validator", "post", "/score/batch", "/score/batch", dict(json={"pairs": [{}]}), 200),
        ("scorer", "score_validator", "get", "/health", "/health", {}, 200),
    ],
)
def test_responses_match_their_described_schemas(request, client_name, spec, method, path, template, kwargs, status):
    from jsonschema import Draft4Validator

    resp = getattr(request.getfixturevalue(client_name), method)(path, **kwargs)
    assert resp.status_code == status, resp.get_data(as_text=True)[:300]
    Draft4Validator(response_schema(spec, template, method, status)).validate(resp.get_json())
