"""Access counting (issue 11): every 2xx POST /query is an access, counted in memory and written to
PostgreSQL in batches; GET /status and GET /metrics write them before reading."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from storage_service.access import AccessRecorder, Batch, PendingAccess, add_access, merge_back
from storage_service.app import create_app
from storage_service.config import StorageSettings
from tests.unit.web_fakes import UNREACHABLE_KAFKA, FakeCache, FakeProducer, FakeRepository

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_a_batch_sums_accesses_and_keeps_the_latest_time():
    batch: Batch = {}
    add_access(batch, "q1", T0 + timedelta(seconds=2))
    add_access(batch, "q1", T0)  # an access recorded out of order never moves the time back
    add_access(batch, "q2", T0, count=3)
    assert batch == {"q1": PendingAccess(2, T0 + timedelta(seconds=2)), "q2": PendingAccess(3, T0)}


def test_an_unwritten_batch_goes_back_but_memory_stays_bounded():
    pending: Batch = {"q1": PendingAccess(1, T0)}
    failed: Batch = {"q1": PendingAccess(2, T0), "q2": PendingAccess(4, T0), "q3": PendingAccess(5, T0)}
    dropped = merge_back(pending, failed, max_questions=2)
    assert pending == {"q1": PendingAccess(3, T0), "q2": PendingAccess(4, T0)}
    assert dropped == 5


class Writer:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.batches: list[dict[str, int]] = []

    def __call__(self, batch: Batch) -> None:
        if self.fail:
            raise ConnectionError("PostgreSQL is down")
        self.batches.append({qid: access.count for qid, access in batch.items()})


def test_flush_writes_one_batch_and_retries_after_a_failure():
    writer = Writer(fail=True)
    recorder = AccessRecorder(writer, clock=lambda: T0)
    for qid in ("a", "b", "a"):
        recorder.record(qid)
    assert recorder.flush() == 0  # the write failed: nothing lost, nothing raised
    assert recorder.stats() == {
        "accesses_recorded": 3,
        "accesses_unwritten": 3,
        "accesses_dropped": 0,
        "access_flush_failures": 1,
    }
    writer.fail = False
    recorder.record("b")
    assert recorder.flush() == 4
    assert writer.batches == [{"a": 2, "b": 2}]
    assert recorder.flush() == 0 and writer.batches == [{"a": 2, "b": 2}]  # nothing pending: no write
    assert recorder.stats()["accesses_unwritten"] == 0


def test_close_writes_what_is_left():
    writer = Writer()
    recorder = AccessRecorder(writer, flush_every_s=3600).start()
    recorder.record("q")
    recorder.close()
    assert writer.batches == [{"q": 1}]


def test_every_2xx_post_is_an_access_and_status_and_metrics_see_them():
    repo = FakeRepository()
    settings = StorageSettings(kafka_bootstrap_servers=UNREACHABLE_KAFKA, access_flush_s=3600)
    app = create_app(settings, repo, FakeCache(), FakeProducer())  # type: ignore[arg-type]
    client = app.test_client()
    body = {"question_text": "How often is this asked?", "original_answer": "Often."}
    assert client.post("/query", json=body).status_code == 202  # creates it: access 1
    assert client.post("/query", json=body).status_code == 202  # pending: access 2
    assert client.post("/query", json={"question_text": "no answer"}).status_code == 400  # not an access
    assert repo.accesses == {}  # still in memory: the flush interval is an hour
    metrics = client.get("/metrics").get_json()
    [question_id] = repo.claimed
    assert repo.accesses == {question_id: 2}
    assert metrics["accesses_recorded"] == 2 and metrics["accesses_unwritten"] == 0
    client.post("/query", json=body)
    client.get(f"/status/{question_id}")  # 404 on the fake, but it writes the pending access first
    assert repo.accesses == {question_id: 3}


class HitCache(FakeCache):
    def get(self, question_id: str) -> dict[str, str] | None:
        return {"question_id": question_id, "answer": "From Redis."}


def test_a_cache_hit_is_an_access_without_touching_the_database():
    repo = FakeRepository()
    settings = StorageSettings(kafka_bootstrap_servers=UNREACHABLE_KAFKA, access_flush_s=3600)
    app = create_app(settings, repo, HitCache(), FakeProducer())  # type: ignore[arg-type]
    client = app.test_client()
    resp = client.post("/query", json={"question_text": "Cached?", "original_answer": "Yes."})
    assert resp.get_json()["source"] == "cache"
    assert repo.claimed == {} and repo.accesses == {}  # the hit itself wrote nothing to PostgreSQL
    client.get("/metrics")
    assert repo.accesses == {resp.get_json()["question_id"]: 1}


def test_readers_do_not_wait_on_a_database_that_just_failed():
    writer = Writer(fail=True)
    recorder = AccessRecorder(writer, clock=lambda: T0)
    recorder.record("q")
    assert recorder.flush_before_read() == 0 and recorder.stats()["access_flush_failures"] == 1
    assert recorder.flush_before_read() == 0 and recorder.stats()["access_flush_failures"] == 1  # not tried
    writer.fail = False
    assert recorder.flush() == 1  # the background flush succeeds again...
    recorder.record("q")
    assert recorder.flush_before_read() == 1  # ...and readers flush again
    assert writer.batches == [{"q": 1}, {"q": 1}]
