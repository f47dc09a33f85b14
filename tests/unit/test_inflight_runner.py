"""The runner with many messages in flight (common.inflight_runner), on the in-memory Kafka fakes.

The handler blocks on a gate per question, so each test decides in which order calls finish; waits
are for a call to have finished, never for a time to have passed.
"""

from __future__ import annotations

import threading
from concurrent.futures import wait

import pytest
from confluent_kafka import TopicPartition

from common import topics
from common.inflight_runner import InFlightRunner
from common.kafka import RetryLater, StopFlag
from common.messages import PipelineMessage
from tests.fakes import Clock, FakeConsumer, FakeMessage, FakeProducer, question


class Gates:
    """A handler whose call for question `text` returns only once `open(text)` was called."""

    def __init__(self) -> None:
        self.events: dict[str, threading.Event] = {}
        self.started: list[str] = []
        self.lock = threading.Lock()
        self.fail: dict[str, Exception] = {}

    def gate(self, text: str) -> threading.Event:
        with self.lock:
            return self.events.setdefault(text, threading.Event())

    def open(self, *texts: str) -> None:
        for text in texts:
            self.gate(text).set()

    def __call__(self, message: PipelineMessage, _topic: str):
        with self.lock:
            self.started.append(message.question_text)
        assert self.gate(message.question_text).wait(10), "a gate was never opened"
        error = self.fail.pop(message.question_text, None)
        if error is not None:
            raise error
        return [(topics.LLM_RESPONSES_SUCCESS, message.evolve(llm_answer=f"answer to {message.question_text}"))]


def msg(text: str, offset: int, partition: int = 0) -> FakeMessage:
    q = question(text)
    return FakeMessage(q.to_bytes(), partition=partition, offset=offset, key=q.key)


def make_runner(messages, gates: Gates, *, limit: int = 8, clock=None, producer=None, consumer=None, **kwargs):
    stop = StopFlag()
    consumer = consumer or FakeConsumer(messages)
    consumer.stop = None  # the test decides when to stop, not the fake running dry
    return InFlightRunner(
        bootstrap_servers="unused:9092",
        group_id="test-group",
        client_id="test",
        stage="test-inflight",
        source_topics=[topics.QUESTIONS_PENDING],
        handler=gates,
        stop=stop,
        consumer=consumer,
        producer=producer or FakeProducer(),
        clock=clock or Clock(),
        max_in_flight=lambda: limit,
        max_workers=limit,
        **kwargs,
    )


def finish(r: InFlightRunner, *texts: str, gates: Gates) -> None:
    """Let the calls of `texts` return, wait until they did, and let the loop produce and commit."""
    gates.open(*texts)
    futures = [
        slot.future
        for slot in r.slots.values()
        if slot.future is not None and slot.message is not None and slot.message.question_text in texts
    ]
    wait(futures, timeout=10)
    r._settle()


def poll(r: InFlightRunner, turns: int) -> None:
    for _ in range(turns):
        r.poll_once(0)


def answered(r: InFlightRunner) -> list[str]:
    return [m.question_text for t, m in r.producer.sent if t == topics.LLM_RESPONSES_SUCCESS]


def wait_started(gates: Gates, count: int) -> None:
    deadline = threading.Event()
    for _ in range(1000):
        with gates.lock:
            if len(gates.started) >= count:
                return
        deadline.wait(0.01)
    pytest.fail(f"only {gates.started} started")


def test_many_messages_are_in_flight_at_once():
    gates = Gates()
    r = make_runner([msg(f"q{i}", i) for i in range(5)], gates)
    poll(r, 5)
    wait_started(gates, 5)  # all five handlers run at the same time: none has returned yet
    assert r.running() == 5 and r.producer.sent == [] and r.consumer.commits == []
    finish(r, "q0", "q1", "q2", "q3", "q4", gates=gates)
    assert sorted(answered(r)) == ["q0", "q1", "q2", "q3", "q4"]
    assert r.consumer.commits[-1] == 4 and r.slots == {}
    r.pool.shutdown()


def test_an_out_of_order_completion_does_not_commit_past_a_pending_one():
    gates = Gates()
    r = make_runner([msg(f"q{i}", 10 + i) for i in range(4)], gates)
    poll(r, 4)
    finish(r, "q1", "q2", gates=gates)
    assert sorted(answered(r)) == ["q1", "q2"]  # their outputs are produced as soon as they are ready
    assert r.consumer.commits == []  # but offset 10 is still in flight
    finish(r, "q0", gates=gates)
    assert r.consumer.commits == [12]  # 10, 11, 12 done: committed up to 13; 13 still in flight
    finish(r, "q3", gates=gates)
    assert r.consumer.commits == [12, 13]
    r.pool.shutdown()


def test_partitions_commit_independently():
    gates = Gates()
    r = make_runner([msg("a", 1, partition=0), msg("b", 1, partition=1)], gates)
    poll(r, 2)
    finish(r, "b", gates=gates)
    assert r.uncommitted == {} and r.consumer.commits == [1]  # partition 1's offset 1
    assert r.offsets.committable((topics.QUESTIONS_PENDING, 0)) is None
    finish(r, "a", gates=gates)
    r.pool.shutdown()


def test_a_question_has_at_most_one_message_in_flight_and_keeps_its_order():
    gates = Gates()
    first, again = question("same"), question("same").evolve(attempt=2)
    other = question("other")
    messages = [
        FakeMessage(first.to_bytes(), offset=1, key=first.key),
        FakeMessage(again.to_bytes(), offset=2, key=again.key),
        FakeMessage(other.to_bytes(), offset=3, key=other.key),
    ]
    r = make_runner(messages, gates)
    poll(r, 3)
    wait_started(gates, 2)
    assert r.running() == 2  # "same" (attempt 1) and "other"; attempt 2 waits for attempt 1
    finish(r, "same", gates=gates)  # the gate stays open: attempt 2 starts now and returns
    assert r.running() == 2  # attempt 2 of "same" and "other"
    wait_started(gates, 3)
    finish(r, "same", "other", gates=gates)
    attempts = [m.attempt for t, m in r.producer.sent if m.question_text == "same"]
    assert attempts == [1, 2] and r.consumer.commits[-1] == 3
    r.pool.shutdown()


def test_at_the_limit_it_stops_polling_until_a_call_finishes():
    gates = Gates()
    r = make_runner([msg(f"q{i}", i) for i in range(5)], gates, limit=2)
    poll(r, 6)
    assert r.consumer.polls == 2 and len(r.slots) == 2  # the other three stay in the broker
    finish(r, "q0", gates=gates)
    poll(r, 1)
    assert r.consumer.polls == 3 and len(r.slots) == 2
    gates.open("q1", "q2", "q3", "q4")
    r.pool.shutdown(wait=True)


def test_unacknowledged_outputs_hold_the_message_and_are_sent_again_without_a_second_call():
    gates = Gates()
    clock = Clock()
    r = make_runner([msg("q0", 0), msg("q1", 1)], gates, clock=clock, producer=FakeProducer(fail_flushes=1))
    poll(r, 2)
    finish(r, "q0", gates=gates)  # its flush fails: held
    assert r.producer.sent == [] and r.slots[(topics.QUESTIONS_PENDING, 0, 0)].due is not None
    finish(r, "q1", gates=gates)  # the next message goes on; its commit waits behind offset 0
    assert answered(r) == ["q1"] and r.consumer.commits == []
    clock.now += 60
    r._settle()
    assert sorted(answered(r)) == ["q0", "q1"] and r.consumer.commits == [1]
    assert gates.started.count("q0") == 1  # the LLM was not asked again
    r.pool.shutdown()


def test_retry_later_holds_the_message_in_its_slot_until_due():
    gates = Gates()
    clock = Clock()
    gates.fail["q0"] = RetryLater(due=clock.now + 30)
    r = make_runner([msg("q0", 0)], gates, clock=clock)
    poll(r, 1)
    finish(r, "q0", gates=gates)
    assert r.producer.sent == [] and r.consumer.commits == [] and r.consumer.seeks == []
    r._settle()
    assert gates.started == ["q0"]  # not due yet
    clock.now += 31
    r._settle()
    wait([s.future for s in r.slots.values() if s.future is not None], timeout=10)
    r._settle()
    assert gates.started == ["q0", "q0"] and answered(r) == ["q0"] and r.consumer.commits == [0]
    r.pool.shutdown()


def test_a_revoke_waits_for_the_revoked_calls_commits_their_prefix_and_drops_the_rest():
    gates = Gates()
    messages = [msg("p0-a", 0, partition=0), msg("p0-b", 1, partition=0), msg("p1-a", 0, partition=1)]
    r = make_runner(messages, gates, revoke_wait_s=1.0)
    r._subscribe()
    poll(r, 3)
    wait_started(gates, 3)
    gates.open("p0-a")  # finishes within the wait; p0-b does not
    r.consumer.callbacks["revoke"](r.consumer, [TopicPartition(topics.QUESTIONS_PENDING, 0)])
    assert answered(r) == ["p0-a"] and r.consumer.commits == [0]
    assert list(r.slots) == [(topics.QUESTIONS_PENDING, 1, 0)]  # partition 1 untouched
    finish(r, "p0-b", "p1-a", gates=gates)
    r.pool.shutdown(wait=True)
    r._settle()
    assert "p0-b" not in answered(r)  # a dropped call's late result is thrown away
    assert answered(r) == ["p0-a", "p1-a"] and r.consumer.commits == [0, 0]


def test_sigterm_drains_the_calls_in_flight_then_commits_and_closes():
    gates = Gates()
    r = make_runner([msg(f"q{i}", i) for i in range(4)], gates, drain_timeout_s=10)
    poll(r, 4)
    wait_started(gates, 4)
    r.stop.set()
    threading.Timer(0.2, gates.open, args=("q0", "q1", "q2", "q3")).start()  # they finish during the drain
    r.run()  # the stop flag is set: no more polling, straight to the drain
    assert sorted(answered(r)) == ["q0", "q1", "q2", "q3"]
    assert r.consumer.commits[-1] == 3 and r.consumer.closed


def test_a_drain_that_times_out_commits_only_what_finished():
    gates = Gates()
    r = make_runner([msg("q0", 0), msg("q1", 1)], gates, drain_timeout_s=1.0)
    poll(r, 2)
    gates.open("q1")
    wait_started(gates, 2)
    r.stop.set()
    r.run()
    assert answered(r) == ["q1"] and r.consumer.commits == [] and r.consumer.closed
    gates.open("q0")


def test_garbage_is_dead_lettered_in_order_with_the_rest():
    gates = Gates()
    r = make_runner([msg("q0", 0), FakeMessage(b"garbage", offset=1)], gates)
    poll(r, 2)
    assert [t for t, _ in r.producer.sent] == [topics.DEAD_LETTER] and r.consumer.commits == []
    finish(r, "q0", gates=gates)
    assert r.consumer.commits == [1]
    r.pool.shutdown()


def test_the_dead_letter_topic_is_not_consumed_with_many_in_flight():
    with pytest.raises(ValueError, match="one message at a time"):
        make_runner([], Gates(), consumer=FakeConsumer()).__class__(
            bootstrap_servers="unused:9092",
            group_id="g",
            client_id="c",
            stage="s",
            source_topics=[topics.DEAD_LETTER],
            handler=Gates(),
            dead_letter_handler=lambda letter, topic: [],
            stop=StopFlag(),
            consumer=FakeConsumer(),
            producer=FakeProducer(),
            max_in_flight=lambda: 2,
            max_workers=2,
        )


def test_lost_partitions_drop_their_calls_without_committing():
    gates = Gates()
    r = make_runner([msg("q0", 0), msg("q1", 0, partition=1)], gates)
    r._subscribe()
    poll(r, 2)
    wait_started(gates, 2)
    r.consumer.callbacks["lost"](r.consumer, [TopicPartition(topics.QUESTIONS_PENDING, 0)])
    assert list(r.slots) == [(topics.QUESTIONS_PENDING, 1, 0)]
    finish(r, "q1", gates=gates)
    gates.open("q0")
    r.pool.shutdown(wait=True)
    r._settle()
    assert answered(r) == ["q1"] and r.consumer.commits == [0]  # partition 1's offset 0 only


def test_the_in_flight_gauge_counts_running_calls():
    from prometheus_client import REGISTRY

    gates = Gates()
    r = make_runner([msg(f"q{i}", i) for i in range(3)], gates)
    poll(r, 4)
    assert REGISTRY.get_sample_value("yahoo_consumer_in_flight", {"service": "test-inflight"}) == 3
    finish(r, "q0", "q1", "q2", gates=gates)
    poll(r, 1)
    assert REGISTRY.get_sample_value("yahoo_consumer_in_flight", {"service": "test-inflight"}) == 0
    r.pool.shutdown()


def test_a_replaced_clients_revoke_leaves_the_new_clients_calls_alone():
    """A rebuild closes the old client on another thread, and close() revokes what it held: the
    new client may already hold the same partition with calls in flight, which must survive."""
    gates = Gates()
    old = FakeConsumer()
    new = FakeConsumer([msg("q5", 5)])
    new.stop = None
    r = make_runner([], gates, consumer=old, consumer_factory=lambda: new)
    r._subscribe()
    old_revoke, old_lost = old.callbacks["revoke"], old.callbacks["lost"]
    r._rebuild_consumer()
    poll(r, 1)
    wait_started(gates, 1)
    old_revoke(old, [TopicPartition(topics.QUESTIONS_PENDING, 0)])
    old_lost(old, [TopicPartition(topics.QUESTIONS_PENDING, 0)])
    assert list(r.slots) == [(topics.QUESTIONS_PENDING, 0, 5)]
    finish(r, "q5", gates=gates)
    assert answered(r) == ["q5"] and new.commits == [5]
