"""The embedded LLM's pure decisions (engine choice, threads, admission, options, stop sequences)
and its Ollama API on a scripted engine: no model is loaded here."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from common.web import ApiError
from local_llm import load
from local_llm.app import RequestQueue, create_app
from local_llm.config import LocalLLMSettings
from local_llm.engine import (
    LLAMACPP,
    TRANSFORMERS,
    EngineUnavailable,
    Generation,
    Options,
    StopScanner,
    admits,
    choose_engine,
    fit_prompt,
    held_back,
    llamacpp_sampling,
    threads_per_slot,
)

# --- which engine -----------------------------------------------------------------------------


def test_auto_serves_llamacpp_when_it_loaded():
    assert choose_engine("auto", None).engine == LLAMACPP


def test_auto_falls_back_to_transformers_and_says_why():
    choice = choose_engine("auto", "ModuleNotFoundError: No module named 'llama_cpp'")
    assert choice.engine == TRANSFORMERS
    assert "No module named 'llama_cpp'" in choice.reason and "install.sh" in choice.reason


def test_llamacpp_asked_by_name_does_not_fall_back():
    with pytest.raises(EngineUnavailable, match=r"GLIBC_2\.38"):
        choose_engine("llamacpp", "OSError: version `GLIBC_2.38' not found")


def test_transformers_asked_by_name_is_served_even_when_llamacpp_works():
    assert choose_engine("transformers", None).engine == TRANSFORMERS


class _Loaded:
    def __init__(self, engine: str) -> None:
        self.engine, self.slots, self.size_bytes = engine, 1, 0


def test_load_model_falls_back_when_llamacpp_fails_to_load(monkeypatch, caplog):
    def broken(_settings):
        raise ImportError("No module named 'llama_cpp'")

    monkeypatch.setattr(load, "load_llamacpp", broken)
    monkeypatch.setattr(load, "load_transformers", lambda _settings: _Loaded(TRANSFORMERS))
    with caplog.at_level(logging.WARNING, logger="local_llm.load"):
        model = load.load_model(LocalLLMSettings(local_llm_engine="auto"))
    assert model.engine == TRANSFORMERS
    [record] = [r for r in caplog.records if r.getMessage() == "engine chosen"]
    assert "No module named 'llama_cpp'" in record.reason  # type: ignore[attr-defined]


def test_load_model_refuses_when_llamacpp_was_asked_and_fails(monkeypatch):
    def broken(_settings):
        raise RuntimeError("the GGUF file has no chat template")

    monkeypatch.setattr(load, "load_llamacpp", broken)
    monkeypatch.setattr(load, "load_transformers", lambda _settings: _Loaded(TRANSFORMERS))
    with pytest.raises(EngineUnavailable, match="no chat template"):
        load.load_model(LocalLLMSettings(local_llm_engine="llamacpp"))


def test_load_model_does_not_touch_llamacpp_when_transformers_is_asked(monkeypatch):
    def must_not_run(_settings):
        raise AssertionError("llama.cpp was loaded")

    monkeypatch.setattr(load, "load_llamacpp", must_not_run)
    monkeypatch.setattr(load, "load_transformers", lambda _settings: _Loaded(TRANSFORMERS))
    assert load.load_model(LocalLLMSettings(local_llm_engine="transformers")).engine == TRANSFORMERS


def test_an_unknown_engine_name_is_a_configuration_error():
    with pytest.raises(ValueError):
        LocalLLMSettings(local_llm_engine="vllm")


# --- threads and slots ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threads", "slots", "each"),
    [(2, 2, 1), (2, 1, 2), (1, 2, 1), (8, 3, 2), (4, 0, 4)],
)
def test_threads_are_shared_between_slots_never_below_one(threads, slots, each):
    assert threads_per_slot(threads, slots) == each


def test_admission_counts_the_generating_slots_and_the_waiting_queue():
    assert [admits(pending, parallel=2, max_waiting=0) for pending in range(4)] == [True, True, False, False]
    assert [admits(pending, parallel=1, max_waiting=2) for pending in range(4)] == [True, True, True, False]


def test_request_queue_refuses_with_ollamas_503_when_full_and_frees_slots():
    queue = RequestQueue(parallel=2, max_waiting=0)
    with queue.slot(), queue.slot():
        assert queue.full()
        with pytest.raises(ApiError) as refused, queue.slot():
            pass
        assert refused.value.status == 503 and "maximum pending requests exceeded" in refused.value.message
    assert queue.pending == 0 and not queue.full()


# --- options ----------------------------------------------------------------------------------


def test_options_take_ollamas_names_and_defaults():
    options = Options.from_request(
        {"temperature": 0.2, "top_p": 0.5, "top_k": 7, "seed": "3", "num_predict": 64, "stop": "\n"}, 128, 1024
    )
    assert options == Options(temperature=0.2, top_p=0.5, top_k=7, seed=3, num_predict=64, stop=["\n"])
    defaults = Options.from_request(None, 128, 1024)
    assert (defaults.temperature, defaults.top_k, defaults.repeat_penalty, defaults.num_predict) == (0.8, 40, 1.1, 128)


def test_num_predict_is_capped_and_minus_one_means_the_cap():
    assert Options.from_request({"num_predict": -1}, 128, 1024).num_predict == 1024
    assert Options.from_request({"num_predict": 5000}, 128, 1024).num_predict == 1024
    assert Options.from_request({"num_predict": 0}, 128, 1024).num_predict == 1


@pytest.mark.parametrize("bad", [{"num_predict": "x"}, {"temperature": "hot"}, {"top_k": [1]}])
def test_options_of_the_wrong_type_are_refused(bad):
    with pytest.raises((TypeError, ValueError)):
        Options.from_request(bad, 128, 1024)


def test_llamacpp_sampling_maps_ollamas_options():
    sampling = llamacpp_sampling(Options(temperature=0.7, top_p=0.8, top_k=20, min_p=0.05, repeat_penalty=1.2))
    assert sampling == {"temp": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.05, "repeat_penalty": 1.2}
    assert llamacpp_sampling(Options(temperature=-1))["temp"] == 0.0  # greedy, never llama.cpp's "random"


def test_a_long_prompt_keeps_its_end_beside_room_for_the_answer():
    assert fit_prompt(list(range(10)), context_tokens=8, num_predict=3) == [5, 6, 7, 8, 9]
    assert fit_prompt([1, 2], context_tokens=8, num_predict=3) == [1, 2]
    assert fit_prompt(list(range(10)), context_tokens=4, num_predict=9) == [9]


# --- stop sequences ---------------------------------------------------------------------------


def streamed(stops: list[str], pieces: list[str]) -> tuple[list[str], str, bool]:
    scanner = StopScanner(stops)
    out = [scanner.feed(p) for p in pieces]
    if not scanner.stopped:
        out.append(scanner.flush())
    return [o for o in out if o], scanner.text, scanner.stopped


def test_a_stop_sequence_split_across_pieces_is_never_streamed():
    out, text, stopped = streamed(["</s>"], ["Paris", " is <", "/", "s> and more"])
    assert out == ["Paris", " is "] and text == "Paris is " and stopped


def test_held_back_text_is_sent_when_it_turns_out_not_to_be_a_stop():
    out, text, stopped = streamed(["</s>"], ["a <", "b", " c <"])
    assert out == ["a ", "<b", " c ", "<"] and text == "a <b c <" and not stopped


def test_the_earliest_of_several_stops_wins():
    out, text, _ = streamed(["5", "3,"], ["1, 2, 3, 4, 5"])
    assert text == "1, 2, " and "".join(out) == text


def test_without_stops_every_piece_goes_out_at_once():
    out, text, stopped = streamed([], ["a", "b"])
    assert out == ["a", "b"] and text == "ab" and not stopped


def test_held_back_is_the_longest_stop_prefix_at_the_end():
    assert held_back("abc <|im", ["<|im_end|>", "xyz"]) == 4
    assert held_back("abc", ["<|im_end|>"]) == 0
    assert held_back("ab", ["b", "abc"]) == 2  # a whole one-character stop is found by first_stop, not held


# --- the Ollama API on a scripted engine --------------------------------------------------------


class ScriptedEngine:
    """Answers every prompt with the same pieces; records the options it was given."""

    engine = "scripted"
    slots = 2
    size_bytes = 123

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces
        self.options: list[Options] = []

    def chat_prompt_ids(self, messages: list[dict]) -> list[str]:
        return [m["content"] for m in messages]

    def raw_prompt_ids(self, prompt: str) -> list[str]:
        return [prompt]

    def stream(self, inputs, options: Options) -> Iterator[str | Generation]:
        self.options.append(options)
        yield from self.pieces
        yield Generation("".join(self.pieces), "stop", len(inputs), len(self.pieces), 1_000, 2_000)


@pytest.fixture
def api():
    engine = ScriptedEngine(["Santiago", " is the capital."])
    app = create_app(LocalLLMSettings(ollama_max_queue=0), engine)  # type: ignore[arg-type]
    return app.test_client(), engine


def test_generate_answers_in_ollamas_shape_with_the_engines_totals(api):
    client, engine = api
    body = client.post("/api/generate", json={"prompt": "Capital of Chile?", "stream": False, "options": {"seed": 5}})
    reply = body.get_json()
    assert body.status_code == 200
    assert reply["response"] == "Santiago is the capital." and reply["done"] and reply["done_reason"] == "stop"
    assert (reply["eval_count"], reply["prompt_eval_duration"], reply["total_duration"]) == (2, 1_000, 3_000)
    assert engine.options[0].seed == 5


def test_chat_streams_one_ndjson_line_per_piece_then_the_totals(api):
    client, _ = api
    lines = client.post("/api/chat", json={"messages": [{"role": "user", "content": "hi"}]}).data.splitlines()
    chunks = [json.loads(line) for line in lines]
    assert [c["message"]["content"] for c in chunks] == ["Santiago", " is the capital.", ""]
    assert [c["done"] for c in chunks] == [False, False, True]


def test_version_names_the_engine_and_bad_options_are_a_400(api):
    client, _ = api
    assert client.get("/api/version").get_json()["engine"] == "scripted"
    bad = client.post("/api/generate", json={"prompt": "x", "options": {"top_k": "many"}})
    assert bad.status_code == 400 and "invalid options" in bad.get_json()["error"]
