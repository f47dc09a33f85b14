"""An Ollama-API-compatible test server whose replies are scripted per question.

The only stand-in the test suite uses (for the LLM). A script maps a marker that appears in the
question to a list of actions, consumed one per call: an answer, an HTTP status (503, 429, 500),
or a delay. Every call is recorded with its time, so tests can check retry gaps.

Serving capacity, for the benchmarks (benchmarks/e2e.py): `latency_s` is added to every call (a
model that takes that long per answer), and `slots` bounds how many calls are answered at once
(None: any number, the default). A call beyond the slots waits in a queue for one (`overflow="queue"`,
as Ollama queues behind OLLAMA_NUM_PARALLEL) or is refused at once with 503 and `Retry-After: 1`
(`overflow="503"`, an overloaded server). The defaults keep the tests' fake instant and unbounded.
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
    latency_s: float = 0.0
    slots: int | None = None
    overflow: str = "queue"  # or "503"
    refused: int = 0  # calls refused for want of a free slot
    busy: int = 0  # calls being answered now
    peak_busy: int = 0
    _slot_free: threading.Condition = field(default_factory=threading.Condition)

    def serve_like(self, *, latency_s: float = 0.0, slots: int | None = None, overflow: str = "queue") -> None:
        """Change the serving capacity (the benchmarks switch between an instant and a slow LLM)."""
        if overflow not in ("queue", "503"):
            raise ValueError(f"overflow must be 'queue' or '503', not {overflow!r}")
        with self._slot_free:
            self.latency_s, self.slots, self.overflow = latency_s, slots, overflow
            self.peak_busy = self.busy
            self._slot_free.notify_all()

    def take_slot(self) -> bool:
        """A slot to answer in (waits for one when queueing); False: refuse the call with 503."""
        with self._slot_free:
            while self.slots is not None and self.busy >= self.slots:
                if self.overflow == "503":
                    self.refused += 1
                    return False
                self._slot_free.wait()
            self.busy += 1
            self.peak_busy = max(self.peak_busy, self.busy)
            return True

    def free_slot(self) -> None:
        with self._slot_free:
            self.busy -= 1
            self._slot_free.notify()

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
            if not fake.take_slot():
                self.refuse_busy()
                return
            try:
                self.answer(body, prompt)
            finally:
                fake.free_slot()

        def refuse_busy(self) -> None:
            data = json.dumps({"error": "server busy: every slot is answering"}).encode()
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(data)

        def answer(self, body: dict, prompt: str) -> None:
            action = fake.next_action(prompt)
            if action.delay_s or fake.latency_s:
                time.sleep(action.delay_s + fake.latency_s)
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


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5. Each call is a new connection (HTTP/1.0), so the consumers'
    # bursts of up to 2 x LLM_MAX_CONCURRENCY connects overflowed it and the resets read as LLM
    # overload, halving their concurrency limit: an artefact of this server, not of an LLM's.
    request_queue_size = 512


def start_fake_ollama(port: int) -> tuple[FakeOllama, ThreadingHTTPServer]:
    fake = FakeOllama()
    server = _Server(("127.0.0.1", port), make_handler(fake))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fake, server
