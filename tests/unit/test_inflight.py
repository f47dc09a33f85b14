"""The pure pieces of many calls in flight: the per-partition offset tracker, the AIMD limiter, and
Retry-After (a longer server-given delay wins over the configured retry delay)."""

from __future__ import annotations

import heapq
import itertools
import statistics
import threading
from collections import deque
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from common import topics
from common.inflight import AimdLimiter, OffsetTracker
from common.messages import LLMError
from common.policy import MAX_RETRY_AFTER_S, FailureKind, RetryPolicy, retry_wait_s
from llm_consumer.clients import LLMFailure, OllamaClient, retry_after_s
from llm_consumer.worker import drain_timeout_s, llm_handler
from scripts.platform.processes import CONSUMER_STOP_MARGIN_S
from tests.fakes import question

P0, P1 = ("questions-pending", 0), ("questions-pending", 1)

# -- the offset tracker -------------------------------------------------------------------------------


def test_only_the_contiguous_done_prefix_is_committable():
    tracker = OffsetTracker()
    for offset in (5, 6, 7, 8):
        tracker.start(P0, offset)
    assert tracker.committable(P0) is None
    tracker.done(P0, 7)
    tracker.done(P0, 6)
    assert tracker.committable(P0) is None  # 5 is still pending: nothing past it
    tracker.done(P0, 5)
    assert tracker.committable(P0) == 8  # 5, 6, 7 done; 8 pending
    assert tracker.pending(P0) == [8]
    tracker.done(P0, 8)
    assert tracker.committable(P0) == 9 and tracker.pending(P0) == []


def test_partitions_are_tracked_apart_and_gaps_in_offsets_are_fine():
    tracker = OffsetTracker()
    tracker.start(P0, 1)
    tracker.start(P0, 4)  # 2 and 3 never came (compaction, a transaction marker)
    tracker.start(P1, 1)
    tracker.done(P0, 4)
    tracker.done(P1, 1)
    assert tracker.committable(P0) is None and tracker.committable(P1) == 2
    tracker.done(P0, 1)
    assert tracker.committable(P0) == 5


def test_a_started_or_done_offset_is_not_started_again():
    tracker = OffsetTracker()
    assert tracker.start(P0, 1) is True
    assert tracker.start(P0, 1) is False
    tracker.done(P0, 1)
    assert tracker.start(P0, 1) is False and tracker.is_done(P0, 1)
    assert not tracker.is_done(P0, 2)


def test_offsets_must_start_in_order():
    tracker = OffsetTracker()
    tracker.start(P0, 5)
    with pytest.raises(ValueError, match="after a later one"):
        tracker.start(P0, 3)


def test_a_dropped_partition_is_forgotten_and_late_completions_ignored():
    tracker = OffsetTracker()
    tracker.start(P0, 1)
    tracker.start(P0, 2)
    tracker.done(P0, 1)
    tracker.drop([P0])
    tracker.done(P0, 2)  # a call of the revoked partition finishing late
    assert tracker.committable(P0) is None and tracker.partitions() == []
    assert tracker.start(P0, 1) is True  # assigned again: starts afresh from the committed offset


# -- the limiter, against simulated servers ------------------------------------------------------------


def run_rounds(limiter: AimdLimiter, rounds: int, serve) -> dict:
    """Each round starts `limit` calls at once; `serve(n)` answers the n-th of c concurrent calls with
    a latency (seconds) or None for a 503. Returns what happened."""
    limits, latencies, refused, calls = [], [], 0, 0
    for _ in range(rounds):
        in_flight = limiter.limit
        limits.append(in_flight)
        tickets = [limiter.start() for _ in range(in_flight)]
        for n, ticket in enumerate(tickets):
            calls += 1
            latency = serve(n, in_flight)
            if latency is None:
                refused += 1
                limiter.overloaded(ticket)
            else:
                latencies.append(latency)
                limiter.succeeded(ticket, latency)
    return {"limits": limits, "latencies": latencies, "refused": refused, "calls": calls}


def test_on_a_parallel_server_it_finds_the_parallelism_up_to_its_bound():
    limiter = AimdLimiter(32)
    seen = run_rounds(limiter, 40, lambda n, c: 1.0)  # any number at once, 1 s each
    assert limiter.limit == 32 and seen["refused"] == 0
    assert seen["limits"][:6] == [1, 2, 4, 8, 16, 32]  # slow start: doubles after each round


def test_millisecond_jitter_of_a_fast_server_is_not_congestion():
    limiter = AimdLimiter(32)
    jitter = iter([0.002, 0.006] * 1000)  # triples from one call to the next, never queues
    seen = run_rounds(limiter, 40, lambda n, c: next(jitter))
    assert seen["limits"][:6] == [1, 2, 4, 8, 16, 32] and limiter.limit == 32


def test_a_slower_server_that_queues_still_reads_as_congestion():
    limiter = AimdLimiter(32)
    seen = run_rounds(limiter, 200, lambda n, c: 0.05 * c)  # serialises: c at once take c times as long
    assert max(seen["limits"][100:]) <= 2  # 0.05 s calls queued behind one more rise past min_rise_s


def share_a_queueing_server(limiters: list[AimdLimiter], calls: int, slots: int) -> list[int]:
    """Consumers, each keeping its limit of calls in flight, calling one server that runs `slots` calls
    at once (about 1 s each) and queues the rest in arrival order: each consumer sees the queue every
    consumer fills, at its own moments. Returns the server's busy slots after each call, `calls` in all."""
    now, order = 0.0, itertools.count()
    queue: deque = deque()  # (consumer, ticket, sent at)
    running: list = []  # heap of (finishes at, order, consumer, ticket, sent at)
    in_flight = [0] * len(limiters)
    busy = []

    def send_up_to_limit(i: int) -> None:
        while in_flight[i] < limiters[i].limit:
            in_flight[i] += 1
            queue.append((i, limiters[i].start(), now))

    def serve_queued() -> None:
        while queue and len(running) < slots:
            i, ticket, sent = queue.popleft()
            n = next(order)
            heapq.heappush(running, (now + 1.0 + 0.01 * (n % 7), n, i, ticket, sent))  # a little jitter

    for i in range(len(limiters)):
        send_up_to_limit(i)
    serve_queued()
    for _ in range(calls):
        now, _, i, ticket, sent = heapq.heappop(running)
        limiters[i].succeeded(ticket, now - sent)
        in_flight[i] -= 1
        send_up_to_limit(i)
        serve_queued()
        busy.append(len(running))
    return busy


def test_two_consumers_sharing_a_server_keep_its_slots_busy():
    # Each sees the queue the other fills: halving on that emptied the server, measured on the stack.
    busy = share_a_queueing_server([AimdLimiter(32), AimdLimiter(32)], 20_000, slots=32)
    assert statistics.mean(busy[2000:]) / 32 >= 0.85


def test_on_a_server_with_eight_slots_it_settles_around_eight():
    limiter = AimdLimiter(64)
    seen = run_rounds(limiter, 600, lambda n, c: 1.0 if n < 8 else None)  # 503 beyond 8
    late = seen["limits"][300:]
    assert min(late) >= 4 and max(late) <= 9
    assert seen["refused"] / seen["calls"] < 0.05


def test_on_a_one_slot_server_that_refuses_more_it_stays_at_one_and_rarely_probes():
    limiter = AimdLimiter(16)
    seen = run_rounds(limiter, 1000, lambda n, c: 1.0 if n == 0 else None)
    assert statistics.mean(seen["limits"]) < 1.05
    assert seen["refused"] / seen["calls"] < 0.02  # one probe now and then, ever rarer


def test_on_a_one_slot_server_that_queues_latency_stays_that_of_one_call():
    limiter = AimdLimiter(16)
    seen = run_rounds(limiter, 1000, lambda n, c: 1.0 * c)  # c calls at once each take c times as long
    assert statistics.median(seen["latencies"]) == 1.0
    assert statistics.mean(seen["limits"]) < 1.05


def test_on_a_fast_one_slot_server_that_queues_latency_stays_that_of_one_call():
    limiter = AimdLimiter(16)
    seen = run_rounds(limiter, 1000, lambda n, c: 0.05 * c)  # 50 ms a call, one at a time
    assert statistics.median(seen["latencies"]) == 0.05
    assert statistics.mean(seen["limits"]) < 1.05


def test_timeouts_halve_it_once_per_burst():
    limiter = AimdLimiter(32)
    run_rounds(limiter, 40, lambda n, c: 1.0)
    assert limiter.limit == 32
    tickets = [limiter.start() for _ in range(32)]
    for ticket in tickets:  # every call in flight times out together
        limiter.overloaded(ticket)
    assert limiter.limit == 16  # one signal, one halving
    limiter.overloaded(limiter.start())  # a call started after the decrease times out too
    assert limiter.limit == 8


def test_it_never_goes_below_one_or_above_its_bound():
    limiter = AimdLimiter(3)
    for _ in range(5):
        limiter.overloaded(limiter.start())
    assert limiter.limit == 1
    run_rounds(limiter, 200, lambda n, c: 1.0)
    assert limiter.limit == 3
    with pytest.raises(ValueError):
        AimdLimiter(0)


def test_a_server_that_got_slower_for_good_becomes_the_new_baseline():
    limiter = AimdLimiter(8)
    run_rounds(limiter, 30, lambda n, c: 1.0)
    assert limiter.limit == 8
    slower = run_rounds(limiter, 300, lambda n, c: 5.0)  # five times slower at any concurrency
    assert limiter.limit == 8
    # One cut, then a window as slow as before it: not our calls' doing, so no cut after that one
    # (cutting on down to 1 emptied a shared server in the benchmark).
    assert min(slower["limits"]) == 6


# -- Retry-After ---------------------------------------------------------------------------------------


def test_retry_after_header_in_seconds_or_as_a_date():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_s("120") == 120.0
    assert retry_after_s(" 1.5 ") == 1.5
    assert retry_after_s("Thu, 01 Jan 2026 00:00:30 GMT", now) == 30.0
    assert retry_after_s("Wed, 31 Dec 2025 23:00:00 GMT", now) == 0.0  # in the past: at once
    for unreadable in (None, "", "soon", "nan", "inf"):
        assert retry_after_s(unreadable) is None
    assert retry_after_s("-5") == 0.0


def test_a_longer_server_delay_wins_a_shorter_does_not_and_a_huge_one_is_capped():
    assert retry_wait_s(5.0, None) == 5.0
    assert retry_wait_s(5.0, 2.0) == 5.0
    assert retry_wait_s(5.0, 30.0) == 30.0
    assert retry_wait_s(5.0, 1e9) == MAX_RETRY_AFTER_S


def test_the_retry_is_due_after_the_servers_retry_after():
    policy = RetryPolicy(FailureKind.QUOTA, base_delay_s=3.0, max_retries=5, exponential=False)
    failed_at = datetime(2026, 1, 1, tzinfo=UTC)
    plain = question(error=LLMError(status=429, kind="quota")).model_copy(update={"updated_at": failed_at})
    told = question(error=LLMError(status=429, kind="quota", retry_after_s=40.0)).model_copy(
        update={"updated_at": failed_at}
    )
    assert policy.due_at(plain) == (failed_at + timedelta(seconds=3)).timestamp()
    assert policy.due_at(told) == (failed_at + timedelta(seconds=40)).timestamp()


def test_retry_after_is_an_optional_field_of_the_error():
    assert LLMError(kind="overload").retry_after_s is None
    old = {"status": 503, "kind": "overload", "message": "busy"}  # as producers before it wrote it
    assert LLMError.model_validate(old).retry_after_s is None
    with pytest.raises(ValueError):
        LLMError(kind="overload", retry_after_s=-1)


# -- llm_consumer: the call feeds the limiter and carries Retry-After ----------------------------------


class OneReplyClient:
    url = "http://llm/api/generate"

    def __init__(self, reply):
        self.reply = reply

    def request_body(self, prompt):
        return {"prompt": prompt}

    def generate(self, body):
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def grown_limiter() -> AimdLimiter:
    limiter = AimdLimiter(16)
    run_rounds(limiter, 30, lambda n, c: 1.0)
    assert limiter.limit == 16
    return limiter


@pytest.mark.parametrize(
    ("failure", "topic"),
    [
        (LLMFailure("HTTP 429", status=429, retry_after_s=40.0), topics.ERRORS_QUOTA),
        (LLMFailure("HTTP 503", status=503, retry_after_s=40.0), topics.ERRORS_OVERLOAD),
    ],
)
def test_a_refused_call_halves_the_limit_and_carries_the_servers_retry_after(failure, topic):
    limiter = grown_limiter()
    outputs = llm_handler(OneReplyClient(failure), limiter=limiter)(question(), topics.QUESTIONS_PENDING)
    [(result_topic, failed)] = [o for o in outputs if o[0] != topics.LLM_REQUESTS]
    assert result_topic == topic and failed.error.retry_after_s == 40.0
    assert limiter.limit == 8


def test_a_timeout_halves_the_limit_and_a_plain_error_does_not():
    limiter = grown_limiter()
    llm_handler(OneReplyClient(LLMFailure("slow", timed_out=True)), limiter=limiter)(question(), "t")
    assert limiter.limit == 8
    llm_handler(OneReplyClient(LLMFailure("HTTP 500", status=500)), limiter=limiter)(question(), "t")
    assert limiter.limit == 8  # a server error says nothing about load


def test_the_http_client_reads_retry_after_from_the_response():
    class Busy(BaseHTTPRequestHandler):
        def log_message(self, *_args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(503)
            self.send_header("Retry-After", "17")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    server = HTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = OllamaClient(f"http://127.0.0.1:{server.server_port}", "m", 5, {})
        with pytest.raises(LLMFailure) as failure:
            client.generate(client.request_body("q"))
    finally:
        server.shutdown()
    assert failure.value.status == 503 and failure.value.retry_after_s == 17.0


def test_the_sigterm_drain_ends_within_the_stop_grace_with_time_to_commit():
    for llm_timeout_s in (3.0, 120.0):
        assert llm_timeout_s < drain_timeout_s(llm_timeout_s) <= llm_timeout_s + CONSUMER_STOP_MARGIN_S - 10
