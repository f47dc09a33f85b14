"""An Ollama-API-compatible test server whose replies are scripted per question.

The only stand-in the test suite uses (for the LLM). A script maps a marker that appears in the
question to a list of actions, consumed one per call: an answer, an HTTP status (503, 429, 500),
or a delay. Every call is recorded with its time, so tests can check retry gaps.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.fakes import reply_json


@dataclass(frozen=True)
class Answer:
    text: str
    delay_s: float = 0.0


@dataclass(frozen=True)
class Fail:
    status: int
    delay_s: float = 0.0


@dataclass
class Call:
    at: float
    prompt: str
    marker: str | None
    outcome: str


@dataclass
class FakeOllama:
    default_answer: str = "I do not know."
    scripts: dict[str, list] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, marker: str, *actions) -> None:
        with self.lock:
            self.scripts[marker] = list(actions)

    def calls_for(self, marker: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.marker == marker]

    def next_action(self, prompt: str):
        with self.lock:
            marker = next((m for m in self.scripts if m in prompt), None)
            actions = self.scripts.get(marker, [])
            # The last action repeats once the script is used up.
            action = (actions.pop(0) if len(actions) > 1 else actions[0]) if actions else Answer(self.default_answer)
            outcome = f"answer: {action.text}" if isinstance(action, Answer) else f"status {action.status}"
            self.calls.append(Call(time.time(), prompt, marker, outcome))
            return action


def make_handler(fake: FakeOllama):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/api/version":
                reply_json(self, 200, {"version": "0.0.0-fake"})
            elif self.path == "/api/tags":
                reply_json(self, 200, {"models": [{"name": "fake:latest", "model": "fake:latest"}]})
            else:
                reply_json(self, 404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/api/generate":
                prompt = body.get("prompt", "")
            elif self.path == "/v1/chat/completions":  # OpenAI-compatible, as Ollama also serves
                prompt = (body.get("messages") or [{}])[-1].get("content", "")
            else:
                reply_json(self, 404, {"error": "not found"})
                return
            action = fake.next_action(prompt)
            if action.delay_s:
                time.sleep(action.delay_s)
            if isinstance(action, Fail):
                reply_json(self, action.status, {"error": f"scripted failure {action.status}"})
            elif self.path == "/api/generate":
                reply_json(
                    self,
                    200,
                    {
                        "model": body.get("model", "fake"),
                        "created_at": "2026-01-01T00:00:00Z",
                        "response": action.text,
                        "done": True,
                        "done_reason": "stop",
                        # Ollama's token counts (a word is a token here): llm_consumer's metrics read them.
                        "prompt_eval_count": len(prompt.split()),
                        "eval_count": len(action.text.split()),
                    },
                )
            else:
                reply_json(
                    self,
                    200,
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "model": body.get("model", "fake"),
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": "stop",
                                "message": {"role": "assistant", "content": action.text},
                            }
                        ],
                        "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(action.text.split())},
                    },
                )

    return Handler


def start_fake_ollama(port: int) -> tuple[FakeOllama, ThreadingHTTPServer]:
    fake = FakeOllama()
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(fake))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fake, server
