"""Replays a Yahoo Answers CSV (no header: class, title, content, best_answer) against POST /query.

Arrivals follow a schedule (constant spacing or Poisson); a share of the requests repeats questions
already sent, to exercise the cache. Requests are sent from a thread pool so a slow reply never
delays the next arrival.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import requests

from common.dataset import Question
from common.topics import Status

DISTRIBUTIONS = ("constant", "poisson")


class Progress(Protocol):
    """What a progress bar offers (tqdm does)."""

    def update(self, n: int = 1) -> object: ...


def arrival_offsets(count: int, rate_per_s: float, distribution: str, rng: random.Random) -> list[float]:
    """Seconds from the start at which each request is sent."""
    if rate_per_s <= 0:
        raise ValueError("rate must be positive")
    if distribution == "constant":
        return [i / rate_per_s for i in range(count)]
    if distribution == "poisson":
        offsets, now = [], 0.0
        for _ in range(count):
            offsets.append(now)
            now += rng.expovariate(rate_per_s)
        return offsets
    raise ValueError(f"unknown distribution {distribution!r}; choose from {DISTRIBUTIONS}")


def choose_requests(questions: list[Question], count: int, repeat_ratio: float, rng: random.Random) -> list[Question]:
    """`count` requests: fresh questions in order, with about `repeat_ratio` of them repeating one already sent."""
    chosen: list[Question] = []
    fresh = iter(questions * (count // len(questions) + 1))
    for _ in range(count):
        if chosen and rng.random() < repeat_ratio:
            chosen.append(rng.choice(chosen))
        else:
            chosen.append(next(fresh))
    return chosen


@dataclass
class Outcome:
    status: int | None  # None: no HTTP answer (connection refused, timeout)
    label: str
    latency_s: float
    question_id: str | None = None


def label_of(status: int, body: dict) -> str:
    if status == 200:
        return f"found ({body.get('source', '?')})"
    if status == 202:
        return Status.PENDING.value
    return f"HTTP {status}"


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    elapsed_s: float = 0.0
    final_statuses: Counter = field(default_factory=Counter)

    @property
    def counts(self) -> Counter:
        return Counter(o.label for o in self.outcomes)

    def latency_percentiles_ms(self) -> dict[str, float]:
        latencies = sorted(o.latency_s * 1000 for o in self.outcomes if o.status is not None)
        if not latencies:
            return {}
        if len(latencies) == 1:
            return {"p50": latencies[0], "p90": latencies[0], "p99": latencies[0], "max": latencies[0]}
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        return {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "max": latencies[-1]}

    def render(self) -> str:
        sent = len(self.outcomes)
        rate = sent / self.elapsed_s if self.elapsed_s else 0
        lines = [f"sent {sent} requests in {self.elapsed_s:.1f}s ({rate:.2f} req/s)"]
        lines += [f"  {label:<18} {n}" for label, n in sorted(self.counts.items())]
        pct = self.latency_percentiles_ms()
        if pct:
            lines.append("latency ms: " + ", ".join(f"{k} {v:.1f}" for k, v in pct.items()))
        if self.final_statuses:
            lines.append("pipeline outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.final_statuses.items())))
        return "\n".join(lines)


class TrafficGenerator:
    def __init__(self, base_url: str, timeout_s: float = 30.0, workers: int = 16) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.workers = workers
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def send(self, question: Question) -> Outcome:
        started = time.monotonic()
        try:
            resp = self._session().post(
                f"{self.base_url}/query",
                timeout=self.timeout_s,
                json={"question_text": question.question_text, "original_answer": question.original_answer},
            )
        except requests.RequestException as exc:
            return Outcome(None, f"error: {type(exc).__name__}", time.monotonic() - started)
        latency = time.monotonic() - started
        try:
            body = resp.json()
        except ValueError:
            body = {}
        return Outcome(resp.status_code, label_of(resp.status_code, body), latency, body.get("question_id"))

    def run(self, plan: list[Question], offsets: list[float], progress: Progress | None = None) -> Summary:
        summary = Summary()
        lock = threading.Lock()
        started = time.monotonic()

        def record(future) -> None:
            with lock:
                summary.outcomes.append(future.result())
            if progress is not None:
                progress.update(1)

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for question, offset in zip(plan, offsets, strict=True):
                delay = started + offset - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the scheduler thread only; requests run in the pool
                pool.submit(self.send, question).add_done_callback(record)
        summary.elapsed_s = time.monotonic() - started
        return summary

    def wait_for_outcomes(self, summary: Summary, timeout_s: float, poll_s: float = 2.0) -> None:
        """Poll GET /status for every question sent until each is terminal, or the timeout."""
        waiting = {o.question_id for o in summary.outcomes if o.question_id}
        deadline = time.monotonic() + timeout_s
        final: dict[str, str] = {}
        while waiting and time.monotonic() < deadline:
            for qid in list(waiting):
                try:
                    resp = self._session().get(f"{self.base_url}/status/{qid}", timeout=self.timeout_s)
                except requests.RequestException:
                    continue
                if resp.ok and resp.json().get("status") != Status.PENDING:
                    final[qid] = resp.json()["status"]
                    waiting.discard(qid)
            if waiting:
                time.sleep(poll_s)
        summary.final_statuses = Counter(final.values())
        if waiting:
            summary.final_statuses["still pending"] = len(waiting)
