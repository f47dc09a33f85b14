"""ConfirmedProducer.send_and_wait: many request threads, one delivery-report thread (issue 10, item 4).

The librdkafka client is replaced by a scripted one: a delivery report is served only by a poll,
as in librdkafka, so the tests see which thread serves them and what each waiter learns.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from confluent_kafka import KafkaError, KafkaException

from common import kafka
from common.kafka import ConfirmedProducer, DeliveryError
from tests.fakes import question

WAIT_S = 10.0  # a bound that only a hung test reaches, never a measured duration


class ScriptedClient:
    """Stands in for confluent_kafka.Producer: queued reports are served by poll(), in any thread."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.queued: list[tuple] = []  # (callback, key) waiting for a poll
        self.failing_keys: set[bytes] = set()
        self.acknowledging = threading.Event()
        self.acknowledging.set()
        self.polling_threads: set[str] = set()
        self.poll_errors = 0
        self.produced = threading.Semaphore(0)

    def produce(self, topic, key=None, value=None, on_delivery=None, **_kwargs) -> None:
        with self.lock:
            self.queued.append((on_delivery, key))
        self.produced.release()

    def poll(self, timeout: float) -> int:
        self.polling_threads.add(threading.current_thread().name)
        if self.poll_errors:
            self.poll_errors -= 1
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        if not self.acknowledging.wait(timeout):
            return 0
        with self.lock:
            due, self.queued = self.queued, []
        for callback, key in due:
            error = KafkaError(KafkaError._MSG_TIMED_OUT) if key in self.failing_keys else None
            callback(error, None)
        if not due:
            threading.Event().wait(min(timeout, 0.01))
        return len(due)

    def flush(self, timeout: float) -> int:
        return self.poll(timeout) and 0


@pytest.fixture
def client(monkeypatch) -> ScriptedClient:
    made: list[ScriptedClient] = []
    monkeypatch.setattr(kafka, "Producer", lambda config: made.append(ScriptedClient(config)) or made[-1])
    ConfirmedProducer("kafka:9092", "unit")
    return made[0]


@pytest.fixture
def producer(monkeypatch, client) -> ConfirmedProducer:
    monkeypatch.setattr(kafka, "Producer", lambda _config: client)
    confirmed = ConfirmedProducer("kafka:9092", "unit", message_timeout_s=WAIT_S)
    yield confirmed
    client.acknowledging.set()
    confirmed.close()


def test_the_acknowledgement_semantics_stay_all_replicas_and_idempotent_with_a_short_linger(client):
    assert client.config["acks"] == "all"
    assert client.config["enable.idempotence"] is True
    assert client.config["linger.ms"] <= 1


def test_reports_are_served_by_one_background_thread_never_by_the_waiting_callers(producer, client):
    with ThreadPoolExecutor(8, thread_name_prefix="request") as pool:
        list(pool.map(lambda i: producer.send_and_wait("questions", question(f"q{i}?")), range(40)))
    assert client.polling_threads == {"kafka-delivery-reports"}


def test_each_waiter_learns_its_own_outcome_among_many_in_flight(producer, client):
    doomed = [question(f"doomed {i}?") for i in range(5)]
    fine = [question(f"fine {i}?") for i in range(15)]
    client.failing_keys = {m.key for m in doomed}

    def outcome(message) -> str:
        try:
            producer.send_and_wait("questions", message)
        except DeliveryError as exc:
            return f"failed: {exc}"
        return "acknowledged"

    with ThreadPoolExecutor(10) as pool:
        outcomes = dict(zip([m.question_id for m in doomed + fine], pool.map(outcome, doomed + fine), strict=True))
    assert {outcomes[m.question_id] for m in fine} == {"acknowledged"}
    assert all(outcomes[m.question_id].startswith("failed: ") for m in doomed)


def test_a_waiter_is_not_released_before_its_acknowledgement(producer, client):
    client.acknowledging.clear()
    finished = threading.Event()

    def send() -> None:
        producer.send_and_wait("questions", question("held?"))
        finished.set()

    threading.Thread(target=send, daemon=True).start()
    assert client.produced.acquire(timeout=WAIT_S)
    assert not finished.wait(0.2)  # produced, not acknowledged: the caller still waits
    client.acknowledging.set()
    assert finished.wait(WAIT_S)


def test_no_report_within_the_message_timeout_is_a_delivery_error(monkeypatch, client):
    monkeypatch.setattr(kafka, "Producer", lambda _config: client)
    monkeypatch.setattr(ConfirmedProducer, "ACK_GRACE_S", 0.0)
    client.acknowledging.clear()
    producer = ConfirmedProducer("kafka:9092", "unit", message_timeout_s=0.05)
    with pytest.raises(DeliveryError, match="no acknowledgement"):
        producer.send_and_wait("questions", question("lost?"))
    client.acknowledging.set()
    producer.close()


def test_a_full_local_queue_is_a_delivery_error_not_a_wait(producer, client, monkeypatch):
    def full(*_args, **_kwargs):
        raise BufferError("Local: Queue full")

    monkeypatch.setattr(client, "produce", full)
    with pytest.raises(DeliveryError, match="could not enqueue"):
        producer.send_and_wait("questions", question("no room?"))


def test_the_report_thread_survives_a_failing_poll(producer, client):
    client.poll_errors = 2
    producer.send_and_wait("questions", question("after a hiccup?"))
    assert client.poll_errors == 0


def test_close_stops_the_report_thread(monkeypatch, client):
    monkeypatch.setattr(kafka, "Producer", lambda _config: client)
    producer = ConfirmedProducer("kafka:9092", "unit")
    producer.send_and_wait("questions", question("one?"))
    reporter = producer._reporter
    assert reporter is not None and reporter.is_alive()
    producer.close()
    assert not reporter.is_alive()
