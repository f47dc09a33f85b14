"""Ollama's HTTP API for the one local model: /api/generate, /api/chat (NDJSON streaming or not),
/api/tags, /api/version. A bounded queue answers HTTP 503 when full, as Ollama does."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from flask import Flask, Response, jsonify, request

from common.web import ApiError, configure_json_api, json_body
from local_llm.config import LocalLLMSettings
from local_llm.engine import Engine, Generation, Options, admits

log = logging.getLogger(__name__)
VERSION = "0.1.0-yahoo-llm"
MAX_BODY_BYTES = 1_000_000
BUSY_MESSAGE = "server busy, please try again. maximum pending requests exceeded"  # Ollama's own words


def busy() -> ApiError:
    return ApiError(503, "queue_full", BUSY_MESSAGE)


class RequestQueue:
    """Admits `parallel` generating requests plus `max_waiting` waiting ones; the rest are refused."""

    def __init__(self, parallel: int, max_waiting: int) -> None:
        self.parallel, self.max_waiting = parallel, max_waiting
        self._lock = threading.Lock()
        self.pending = 0

    def full(self) -> bool:
        return not admits(self.pending, self.parallel, self.max_waiting)

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            if self.full():
                raise busy()
            self.pending += 1
        try:
            yield
        finally:
            with self._lock:
                self.pending -= 1


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def create_app(settings: LocalLLMSettings, model: Engine) -> Flask:
    app = Flask("local_llm")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    configure_json_api(app)
    queue = RequestQueue(model.slots, settings.ollama_max_queue)
    name = settings.local_llm_model_name

    @app.errorhandler(ApiError)
    def _ollama_error(exc: ApiError):  # Ollama's error shape is {"error": "<message>"}
        return jsonify(error=exc.message), exc.status

    def options_of(body: dict) -> Options:
        try:
            return Options.from_request(
                body.get("options"), settings.local_llm_default_num_predict, settings.local_llm_max_num_predict
            )
        except (TypeError, ValueError) as exc:
            raise ApiError(400, "invalid_options", f"invalid options: {exc}") from exc

    def totals(gen: Generation) -> dict:
        return {
            "done": True,
            "done_reason": gen.done_reason,
            "total_duration": gen.eval_ns + gen.prompt_eval_ns,
            "load_duration": 0,
            "prompt_eval_count": gen.prompt_tokens,
            "prompt_eval_duration": gen.prompt_eval_ns,
            "eval_count": gen.eval_tokens,
            "eval_duration": gen.eval_ns,
        }

    def respond(body: dict, inputs, piece_field) -> Response:
        """Runs one generation inside a queue slot; streams NDJSON unless "stream": false."""
        options = options_of(body)
        stream = body.get("stream", True) is not False

        def generate() -> Iterator[str]:
            with queue.slot():
                for item in model.stream(inputs, options):
                    if isinstance(item, Generation):
                        final = {
                            "model": name,
                            "created_at": now_iso(),
                            **piece_field("" if stream else item.text),
                            **totals(item),
                        }
                        log.info(
                            "generated",
                            extra={
                                "engine": model.engine,
                                "tokens": item.eval_tokens,
                                "seconds": round((item.prompt_eval_ns + item.eval_ns) / 1e9, 2),
                                "first_token_s": round(item.prompt_eval_ns / 1e9, 3),
                            },
                        )
                        yield json.dumps(final) + "\n"
                    elif stream:
                        yield (
                            json.dumps({"model": name, "created_at": now_iso(), **piece_field(item), "done": False})
                            + "\n"
                        )

        if stream:
            if queue.full():  # refuse before the 200 status line goes out
                raise busy()
            return Response(generate(), mimetype="application/x-ndjson")
        *_, last = generate()
        return Response(last, mimetype="application/json")

    @app.post("/api/generate")
    def api_generate():
        body = json_body(request, MAX_BODY_BYTES, require_json_type=False)
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise ApiError(400, "invalid_prompt", "'prompt' must be a string")
        if not prompt:  # Ollama: an empty prompt just loads the model
            return jsonify(model=name, created_at=now_iso(), response="", done=True, done_reason="load")
        if body.get("raw"):
            inputs = model.raw_prompt_ids(prompt)
        else:
            messages = ([{"role": "system", "content": body["system"]}] if body.get("system") else []) + [
                {"role": "user", "content": prompt}
            ]
            inputs = model.chat_prompt_ids(messages)
        return respond(body, inputs, lambda text: {"response": text})

    @app.post("/api/chat")
    def api_chat():
        body = json_body(request, MAX_BODY_BYTES, require_json_type=False)
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(
            isinstance(m, dict)
            and isinstance(m.get("content"), str)
            and m.get("role") in {"system", "user", "assistant"}
            for m in messages
        ):
            raise ApiError(400, "invalid_messages", "'messages' must be a list of {role, content}")
        if not messages:
            return jsonify(
                model=name,
                created_at=now_iso(),
                message={"role": "assistant", "content": ""},
                done=True,
                done_reason="load",
            )
        inputs = model.chat_prompt_ids([{"role": m["role"], "content": m["content"]} for m in messages])
        return respond(body, inputs, lambda text: {"message": {"role": "assistant", "content": text}})

    @app.get("/api/tags")
    def api_tags():
        return jsonify(
            models=[
                {
                    "name": name,
                    "model": name,
                    "modified_at": now_iso(),
                    "size": model.size_bytes,
                    "digest": "",
                    "details": {
                        "format": "gguf",
                        "family": "llama",
                        "families": ["llama"],
                        "parameter_size": "135M",
                        "quantization_level": "Q4_1",
                        "parent_model": "",
                    },
                }
            ]
        )

    @app.get("/api/version")
    def api_version():
        return jsonify(version=VERSION, engine=model.engine)  # "engine": ours, beside Ollama's one field

    @app.route("/", methods=["GET", "HEAD"])
    def root():
        return Response("Ollama is running", mimetype="text/plain")

    return app
