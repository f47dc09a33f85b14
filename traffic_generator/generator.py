"""Replays Yahoo Answers questions (no header: class, title, content, best_answer) against POST /query.

Two independent choices shape the traffic:
- popularity, *which* question each request asks: `uniform` over a universe of distinct questions, or
  `zipf` (rank k asked with probability proportional to 1/k^s), or the legacy `--repeat-ratio` mix of
  fresh questions and repeats of ones already sent;
- arrivals, *when* each request is sent: `constant` spacing, `poisson` (exponential gaps), or `burst`
  (groups of requests at the same instant, at the same mean rate).
Requests are sent from a thread pool so a slow reply never delays the next arrival.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import requests

from common.dataset import Question
from common.messages import question_id_for
from common.topics import Status

ARRIVALS = ("constant", "poisson", "burst")
DISTRIBUTIONS = ARRIVALS  # the old name of the arrivals choice (--distribution)
POPULARITIES = ("uniform", "zipf")
# Where an answer came from, as the per-request CSV labels it.
SOURCES = ("cache", "database", "pending", "error", "rejected")
REQUESTS_CSV_COLUMNS = ("sent_at_s", "question_id", "http_status", "source", "latency_ms")


class Progress(Protocol):
    """What a progress bar offers (tqdm does)."""

    def update(self, n: int = 1) -> object: ...


# ------------------------------------------------------------------------------------------ arrivals


def burst_offsets(count: int, rate_per_s: float, burst_size: int) -> list[float]:
    """`burst_size` requests at once every `burst_size / rate_per_s` seconds: the mean rate stays
    `rate_per_s`, only the requests bunch together (the last burst may be smaller)."""
    if burst_size < 1:
        raise ValueError("burst size must be at least 1")
    every_s = burst_size / rate_per_s
    return [(i // burst_size) * every_s for i in range(count)]


def arrival_offsets(
    count: int, rate_per_s: float, distribution: str, rng: random.Random, burst_size: int = 10
) -> list[float]:
    """Seconds from the start at which each request is sent (distribution: constant|poisson|burst)."""
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
    if distribution == "burst":
        return burst_offsets(count, rate_per_s, burst_size)
    raise ValueError(f"unknown arrival distribution {distribution!r}; choose from {ARRIVALS}")


# ---------------------------------------------------------------------------------------- popularity


def zipf_weights(n: int, s: float) -> list[float]:
    """Probability of rank 1..n under Zipf's law with exponent s (1/k^s, normalised to sum 1)."""
    if n < 1:
        raise ValueError("zipf needs at least one item")
    if s < 0:
        raise ValueError("the zipf exponent must not be negative")
    raw = [1.0 / (k**s) for k in range(1, n + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def popularity_plan(
    questions: list[Question], count: int, popularity: str, zipf_s: float, rng: random.Random
) -> list[Question]:
    """`count` requests drawn independently from `questions` (the universe, most popular first for
    zipf): uniform gives every question the same chance, zipf gives rank k a chance of 1/k^s."""
    if not questions:
        raise ValueError("no questions to draw from")
    if popularity == "uniform":
        return [questions[rng.randrange(len(questions))] for _ in range(count)]
    if popularity == "zipf":
        cumulative = list(itertools.accumulate(zipf_weights(len(questions), zipf_s)))
        last = len(questions) - 1
        # bisect on the cumulative weights: one O(log n) lookup per request
        return [questions[min(bisect.bisect_right(cumulative, rng.random()), last)] for _ in range(count)]
    raise ValueError(f"unknown popularity {popularity!r}; choose from {POPULARITIES}")


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


# ------------------------------------------------------------------------------------------ outcomes


@dataclass
class Outcome:
    status: int | None  # None: no HTTP answer (connection refused, timeout)
    label: str
    latency_s: float
    question_id: str | None = None
    source: str = "error"  # one of SOURCES (source_of)
    sent_at_s: float = 0.0  # seconds from the run's start


def label_of(status: int, body: dict) -> str:
    if status == 200:
        return f"found ({body.get('source', '?')})"
    if status == 202:
        return Status.PENDING.value
    return f"HTTP {status}"


def source_of(status: int | None, body: dict[str, Any]) -> str:
    """Where the answer came from: cache|database (200 with that `source`), pending (202), rejected
    (4xx: the request's fault), error (5xx, no answer at all, or a 200 that names no known source)."""
    if status is None:
        return "error"
    if status == 200:
        source = body.get("source")
        return source if source in ("cache", "database") else "error"
    if status == 202:
        return "pending"
    if 400 <= status < 500:
        return "rejected"
    return "error"


def percentiles_ms(latencies_s: Iterable[float]) -> dict[str, float]:
    latencies = sorted(latency * 1000 for latency in latencies_s)
    if not latencies:
        return {}
    if len(latencies) == 1:
        return {"p50": latencies[0], "p90": latencies[0], "p99": latencies[0], "max": latencies[0]}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "max": latencies[-1]}


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    elapsed_s: float = 0.0
    final_statuses: Counter = field(default_factory=Counter)
    started_at: float = 0.0  # wall clock (time.time()) of the run's start: sent_at_s counts from here

    @property
    def counts(self) -> Counter:
        return Counter(o.label for o in self.outcomes)

    @property
    def by_source(self) -> dict[str, int]:
        """Requests per source, every source present (0 when none)."""
        counts = Counter(o.source for o in self.outcomes)
        return {source: counts.get(source, 0) for source in SOURCES}

    def answered_question_ids(self) -> set[str]:
        """Questions the server holds (answered, or taken as pending): the ones /status knows."""
        return {o.question_id for o in self.outcomes if o.question_id and o.source in ("cache", "database", "pending")}

    def latency_percentiles_ms(self, source: str | None = None) -> dict[str, float]:
        """Over the requests that got an HTTP answer (of one source, when given)."""
        return percentiles_ms(
            o.latency_s for o in self.outcomes if o.status is not None and (source is None or o.source == source)
        )

    def write_requests_csv(self, path: Path | str) -> None:
        """One row per request, in the order they were sent: REQUESTS_CSV_COLUMNS."""
        with Path(path).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(REQUESTS_CSV_COLUMNS)
            for o in sorted(self.outcomes, key=lambda o: o.sent_at_s):
                writer.writerow(
                    [
                        f"{o.sent_at_s:.6f}",
                        o.question_id or "",
                        "" if o.status is None else o.status,
                        o.source,
                        f"{o.latency_s * 1000:.3f}",
                    ]
                )

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


# ----------------------------------------------------------------------------------------- the client


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

    def send(self, question: Question, run_started: float | None = None) -> Outcome:
        """POST one question; `run_started` (time.monotonic() of the run's start) dates it."""
        started = time.monotonic()
        sent_at_s = started - run_started if run_started is not None else 0.0
        # The server's id for it, known even when no answer comes back (errors, rejections).
        local_id = question_id_for(question.question_text)
        try:
            resp = self._session().post(
                f"{self.base_url}/query",
                timeout=self.timeout_s,
                json={"question_text": question.question_text, "original_answer": question.original_answer},
            )
        except requests.RequestException as exc:
            return Outcome(
                None, f"error: {type(exc).__name__}", time.monotonic() - started, local_id, "error", sent_at_s
            )
        latency = time.monotonic() - started
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        return Outcome(
            resp.status_code,
            label_of(resp.status_code, body),
            latency,
            body.get("question_id") or local_id,
            source_of(resp.status_code, body),
            sent_at_s,
        )

    def run(self, plan: list[Question], offsets: list[float], progress: Progress | None = None) -> Summary:
        summary = Summary(started_at=time.time())
        lock = threading.Lock()
        started = time.monotonic()

        def record(future: Future[Outcome]) -> None:
            with lock:
                summary.outcomes.append(future.result())
            if progress is not None:
                progress.update(1)

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for question, offset in zip(plan, offsets, strict=True):
                delay = started + offset - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the scheduler thread only; requests run in the pool
                pool.submit(self.send, question, started).add_done_callback(record)
        summary.elapsed_s = time.monotonic() - started
        return summary

    def _terminal_status(self, question_id: str) -> str | None:
        """The question's status if it is terminal, None while pending or unreadable."""
        try:
            resp = self._session().get(f"{self.base_url}/status/{question_id}", timeout=self.timeout_s)
            status = resp.json().get("status") if resp.ok else None
        except (requests.RequestException, ValueError, AttributeError):
            return None
        return status if isinstance(status, str) and status != Status.PENDING else None

    def wait_for_outcomes(
        self, summary: Summary, timeout_s: float, progress: Progress | None = None, poll_s: float = 2.0
    ) -> None:
        """Poll GET /status for every question the server took until each is terminal, or the
        timeout; `progress` advances by one per question that became terminal. GET /status is not
        an access: waiting does not change the questions' access counts."""
        waiting = summary.answered_question_ids()
        deadline = time.monotonic() + timeout_s
        final: dict[str, str] = {}
        with ThreadPoolExecutor(max_workers=min(self.workers, 8)) as pool:
            while waiting and time.monotonic() < deadline:
                ids = sorted(waiting)
                for qid, status in zip(ids, pool.map(self._terminal_status, ids), strict=True):
                    if status is not None:
                        final[qid] = status
                        waiting.discard(qid)
                        if progress is not None:
                            progress.update(1)
                if waiting:
                    time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        summary.final_statuses = Counter(final.values())
        if waiting:
            summary.final_statuses["still pending"] = len(waiting)


def universe(
    questions: Iterable[Question], limit: int | None = None, key: Callable[[str], str] = question_id_for
) -> list[Question]:
    """Distinct questions (by the server's id, first occurrence kept), at most `limit` of them."""
    seen: set[str] = set()
    out: list[Question] = []
    for question in questions:
        if limit is not None and len(out) >= limit:
            break
        qid = key(question.question_text)
        if qid not in seen:
            seen.add(qid)
            out.append(question)
    return out
