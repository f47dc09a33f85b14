"""The consumer runner's decisions for each message, with the in-memory consumer and producer."""

import json
import time

import pytest
from confluent_kafka import TopicPartition

from common import topics
from common.kafka import (
    MAX_HANDLER_FAILURES,
    MAX_TRANSIENT_BACKOFF_S,
    MEMBERSHIP_CHECK_S,
    DeliveryError,
    RetryLater,
    StopFlag,
    TransientError,
    dropped_out_of_group,
    transient_backoff_s,
)
from common.messages import DeadLetter
from tests.fakes import Clock, FakeConsumer, FakeMessage, FakeProducer, kafka_exception, question, runner

GOOD = question().to_bytes()


def handled(handler, value=GOOD, **kwargs):
    r = runner(handler, **kwargs)
    r.handle(FakeMessage(value))
    return r


def dead_letters(r) -> list[DeadLetter]:
    return [out for topic, out in r.producer.sent if topic == topics.DEAD_LETTER]


def test_success_produces_what_the_handler_returned_then_commits():
    reply = question("answered?")
    r = handled(lambda m, t: [(topics.LLM_RESPONSES_SUCCESS, reply)])
    assert r.producer.sent == [(topics.LLM_RESPONSES_SUCCESS, reply)]
    assert r.consumer.commits == [7] and not r.paused.due


def test_the_handler_gets_the_message_and_its_source_topic():
    seen = []
    handled(lambda m, t: seen.append((m.question_id, t)) or [])
    assert seen == [(question().question_id, topics.QUESTIONS_PENDING)]


def test_unparseable_goes_to_dead_letter_with_raw_bytes_and_is_committed():
    r = handled(lambda m, t: pytest.fail("the handler must not see garbage"), value=b"\xffgarbage")
    [letter] = dead_letters(r)
    assert letter.raw() == b"\xffgarbage" and letter.raw_base64 == "/2dhcmJhZ2U="
    assert letter.source_topic == topics.QUESTIONS_PENDING and letter.offset == 7
    assert letter.stage == "test-stage" and letter.reason.startswith("unparseable")
    assert r.consumer.commits == [7]


DEEP = (json.dumps(question().to_dict())[:-1] + ', "x": ' + "[" * 100 + "]" * 100 + "}").encode()


@pytest.mark.parametrize(
    "poison",
    [
        b"[" * 5000,  # RecursionError in the JSON decoder
        b"\xff\xfe\x00",  # not UTF-8
        None,  # a null record value
        b"null",
        b"[1, 2]",
        b'"a string"',
        b'{"schema_version": 1, "question_id": "x"}',  # schema error: no question_text
        DEEP,  # valid JSON, too deep to re-publish
    ],
)
def test_every_poison_is_dead_lettered_with_its_reason_and_committed(poison):
    r = handled(lambda m, t: pytest.fail("the handler must not see poison"), value=poison)
    [letter] = dead_letters(r)
    assert letter.reason.startswith("unparseable") and letter.stage == "test-stage"
    assert letter.raw_size == len(poison or b"")
    assert r.consumer.commits == [7]


def test_the_loop_survives_a_run_of_poison_and_handles_the_next_good_message():
    handled_ids = []
    messages = [FakeMessage(p, offset=i) for i, p in enumerate([b"[" * 5000, None, b"\xff", b"{}"])]
    messages.append(FakeMessage(GOOD, offset=4))
    r = runner(lambda m, t: handled_ids.append(m.question_id) or [], messages=messages)
    r.run()
    assert len(dead_letters(r)) == 4 and handled_ids == [question().question_id]
    assert r.consumer.commits == [0, 1, 2, 3, 4] and r.consumer.closed


def test_retry_later_pauses_and_rewinds_without_committing():
    def not_yet(m, t):
        raise RetryLater(due=1e12)

    r = handled(not_yet)
    assert r.consumer.commits == [] and r.consumer.seeks == [7]
    assert r.paused.due[(topics.QUESTIONS_PENDING, 0)] == 1e12


@pytest.mark.parametrize("error", [TransientError("db down"), DeliveryError("broker down")])
def test_dependency_outages_are_retried_forever_never_dead_lettered(error):
    def down(m, t):
        raise error

    r = runner(down)
    for _ in range(MAX_HANDLER_FAILURES * 3):
        r.handle(FakeMessage(GOOD))
        assert r.consumer.commits == [] and r.producer.sent == [] and r.paused.due
    assert r.outages[(topics.QUESTIONS_PENDING, 0, 7)] == MAX_HANDLER_FAILURES * 3


def test_outage_backoff_doubles_up_to_a_cap():
    assert [transient_backoff_s(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert transient_backoff_s(50) == MAX_TRANSIENT_BACKOFF_S


def test_other_failures_are_retried_then_dead_lettered():
    def poison(m, t):
        raise ValueError("bug")

    r = runner(poison)
    for _ in range(MAX_HANDLER_FAILURES - 1):
        r.handle(FakeMessage(GOOD))
        assert r.consumer.commits == [] and r.producer.sent == []
    r.handle(FakeMessage(GOOD))
    [letter] = dead_letters(r)
    assert "handler failed" in letter.reason and letter.question_id == question().question_id
    assert r.consumer.commits == [7] and r.handler_failures == {}


def test_outages_do_not_count_towards_giving_up_on_a_handler():
    calls = []

    def outage_then_bug(m, t):
        calls.append(1)
        if len(calls) <= 4:
            raise TransientError("db down")
        raise ValueError("bug")

    r = runner(outage_then_bug)
    for _ in range(5):
        r.handle(FakeMessage(GOOD))
    assert dead_letters(r) == [] and r.consumer.commits == []
    assert r.handler_failures == {(topics.QUESTIONS_PENDING, 0, 7): 1}


def test_a_handler_returning_the_wrong_shape_is_a_handler_failure():
    r = runner(lambda m, t: ["not a (topic, message) pair"])
    for _ in range(MAX_HANDLER_FAILURES):
        r.handle(FakeMessage(GOOD))
    [letter] = dead_letters(r)
    assert "pairs" in letter.reason


def test_unacknowledged_outputs_are_sent_again_without_running_the_handler_again():
    calls = []
    reply = question("answered?")
    r = runner(lambda m, t: calls.append(1) or [(topics.LLM_RESPONSES_SUCCESS, reply)], producer=FakeProducer(1))
    r.handle(FakeMessage(GOOD))
    assert r.consumer.commits == [] and r.producer.sent == [] and r.paused.due  # held
    r.handle(FakeMessage(GOOD))  # delivered again after the backoff
    assert len(calls) == 1  # the LLM is not asked twice because the broker was away
    assert r.producer.sent == [(topics.LLM_RESPONSES_SUCCESS, reply)] and r.consumer.commits == [7]


def test_a_failed_dead_letter_produce_holds_the_message_and_is_retried():
    r = runner(producer=FakeProducer(fail_flushes=3))
    for _ in range(3):
        r.handle(FakeMessage(b"garbage"))
        assert r.consumer.commits == [] and r.paused.due
    r.handle(FakeMessage(b"garbage"))
    [letter] = dead_letters(r)
    assert letter.raw_text == "garbage" and r.consumer.commits == [7]


def test_a_failed_commit_is_retried_not_raised():
    clock = Clock()
    consumer = FakeConsumer()
    consumer.fail_commits = 1
    r = runner(consumer=consumer, clock=clock)
    r.handle(FakeMessage(GOOD))
    assert consumer.commits == [] and r.uncommitted == {(topics.QUESTIONS_PENDING, 0): 8}
    clock.now += 10
    r.poll_once()
    assert consumer.commits == [7] and r.uncommitted == {}


def test_an_unexpected_error_anywhere_does_not_end_the_loop():
    class SeekFails(FakeConsumer):
        def seek(self, tp):
            raise RuntimeError("client bug")

    def not_yet(m, t):
        raise RetryLater(due=1e12)  # makes the runner seek, which blows up

    r = runner(not_yet, consumer=SeekFails([FakeMessage(GOOD), FakeMessage(GOOD, offset=8)]))
    r.run()  # returns normally once the fake runs dry
    assert r.consumer.polls >= 3 and r.consumer.closed


def test_the_delivered_hook_runs_only_after_acknowledgement():
    delivered = []
    reply = question("answered?")
    r = runner(
        lambda m, t: [(topics.LLM_RESPONSES_SUCCESS, reply)],
        producer=FakeProducer(fail_flushes=1),
        on_delivered=lambda m, outs: delivered.append((m.question_id, [t for t, _ in outs])),
    )
    r.handle(FakeMessage(GOOD))
    assert delivered == []
    r.handle(FakeMessage(GOOD))
    assert delivered == [(question().question_id, [topics.LLM_RESPONSES_SUCCESS])]


def test_a_failing_delivered_hook_does_not_block_the_commit():
    def broken(m, outs):
        raise RuntimeError("ledger bug")

    r = handled(lambda m, t: [], on_delivered=broken)
    assert r.consumer.commits == [7]


def letter_bytes(**changes) -> bytes:
    letter = DeadLetter.wrap(b"raw", stage="flink_job", reason="scorer refused", source_topic="x", key=b"qid")
    return letter.model_copy(update=changes).to_bytes()


def test_dead_letters_go_to_the_dead_letter_handler():
    seen = []
    failed = question("failed?")
    r = runner(
        source_topics=[topics.DEAD_LETTER],
        dead_letter_handler=lambda letter, t: (
            seen.append((letter.question_id, letter.reason, t)) or [(topics.LLM_RESPONSES_ERROR, failed)]
        ),
    )
    r.handle(FakeMessage(letter_bytes(), topic=topics.DEAD_LETTER))
    assert seen == [("qid", "scorer refused", topics.DEAD_LETTER)]
    assert r.producer.sent == [(topics.LLM_RESPONSES_ERROR, failed)] and r.consumer.commits == [7]


@pytest.mark.parametrize("bad", [b"[" * 5000, None, b"{}", b"\xff", GOOD])
def test_a_bad_dead_letter_is_logged_and_committed_never_dead_lettered_again(bad):
    r = runner(
        source_topics=[topics.DEAD_LETTER],
        dead_letter_handler=lambda letter, t: pytest.fail("not a dead letter"),
    )
    r.handle(FakeMessage(bad, topic=topics.DEAD_LETTER))
    assert r.producer.sent == [] and r.consumer.commits == [7]


def test_a_dead_letter_handler_that_keeps_failing_gives_up_without_re_dead_lettering():
    def broken(letter, t):
        raise ValueError("bug")

    r = runner(source_topics=[topics.DEAD_LETTER], dead_letter_handler=broken)
    for _ in range(MAX_HANDLER_FAILURES):
        r.handle(FakeMessage(letter_bytes(), topic=topics.DEAD_LETTER))
    assert r.producer.sent == [] and r.consumer.commits == [7]


def test_consuming_dead_letter_needs_a_dead_letter_handler():
    with pytest.raises(ValueError, match="dead_letter_handler"):
        runner(source_topics=[topics.DEAD_LETTER])


def test_assigned_partitions_are_resumed_after_a_rebalance():
    # librdkafka keeps the pause flag: a partition held when it was revoked comes back paused.
    def rebalance(consumer, n):
        if n == 1:
            consumer.callbacks["revoke"](consumer, [partition(0)])
            consumer.callbacks["assign"](consumer, [partition(0), partition(1)])

    def not_yet(m, t):
        raise RetryLater(due=1e12)

    # poll 0: the message is held (partition 0 paused until 1e12); poll 1: the rebalance; poll 2: idle
    consumer = FakeConsumer([FakeMessage(GOOD), None, None], on_poll=rebalance)
    r = runner(not_yet, consumer=consumer)
    r.run()
    assert consumer.paused == [(topics.QUESTIONS_PENDING, 0)]
    assert r.paused.due == {}  # its due time was forgotten with the revoke
    assert consumer.resumed == [(topics.QUESTIONS_PENDING, 0), (topics.QUESTIONS_PENDING, 1)]


def test_lost_partitions_forget_what_was_held_for_them():
    def lose(consumer, n):
        if n == 1:
            consumer.callbacks["lost"](consumer, [partition(0)])

    consumer = FakeConsumer([FakeMessage(b"garbage")], on_poll=lose)
    r = runner(consumer=consumer, producer=FakeProducer(fail_flushes=1))
    r.run()  # poll 0: the dead letter is not acknowledged, so it is held; poll 1: the partition is lost
    assert consumer.paused and not r.unacknowledged and not r.outages and not r.paused.due


def partition(number):
    return TopicPartition(topics.QUESTIONS_PENDING, number)


def test_stop_flag_wait_returns_at_once_when_set():
    stop = StopFlag()
    stop.set()
    assert stop.wait(30) is True


def test_a_failing_poll_is_retried_not_raised():
    class PollFailsOnce(FakeConsumer):
        def poll(self, timeout=None):
            if self.polls == 0:
                self.polls += 1
                raise kafka_exception()
            return super().poll(timeout)

    handled_ids = []
    r = runner(lambda m, t: handled_ids.append(m.question_id) or [], consumer=PollFailsOnce([FakeMessage(GOOD)]))
    r.stop.wait = lambda timeout_s: False  # no real sleep in a unit test
    r.run()
    assert handled_ids == [question().question_id] and r.consumer.commits == [7]


# -- a consumer that fell out of its group is rebuilt -------------------------------------------------


def test_dropped_out_of_group_needs_an_answer_and_a_missing_member():
    assert dropped_out_of_group("me", {"other"})
    assert dropped_out_of_group(None, set())
    assert not dropped_out_of_group("me", {"me", "other"})  # an idle member is still a member
    assert not dropped_out_of_group("me", None)  # the broker did not answer: nothing proven


def membership_runner(members):
    """A runner with no partitions whose broker lists `members()`; counts the clients it builds."""
    clock = Clock()
    built: list[FakeConsumer] = []

    def new_consumer():
        built.append(FakeConsumer())
        return built[-1]

    r = runner(clock=clock, consumer_factory=new_consumer, group_members_probe=members)
    r._subscribe()
    return r, clock, built


def test_a_consumer_no_longer_in_its_group_is_rebuilt_and_resubscribed():
    r, clock, built = membership_runner(lambda: {"someone-else"})
    first = r.consumer
    r.poll_once(0)  # starts the unassigned clock
    clock.now += MEMBERSHIP_CHECK_S - 1
    r.poll_once(0)
    assert built == [] and r.consumer is first
    clock.now += 2
    r.poll_once(0)
    assert len(built) == 1 and r.consumer is built[0]
    assert r.consumer.callbacks["assign"] is not None  # subscribed again, with the rebalance callbacks
    wait_until_closed(first)


def test_an_idle_member_or_an_unanswered_probe_keeps_its_client():
    for members in (lambda: {"member-1"}, lambda: None):
        r, clock, built = membership_runner(members)
        r.poll_once(0)
        clock.now += 3 * MEMBERSHIP_CHECK_S
        r.poll_once(0)
        assert built == []


def test_a_consumer_that_keeps_hearing_messages_never_asks():
    asked = []
    r, clock, built = membership_runner(lambda: asked.append(1) or set())
    r.consumer.assigned = [TopicPartition(topics.QUESTIONS_PENDING, 0)]
    r.consumer.queue = [FakeMessage(GOOD, offset=n) for n in range(6)]
    for _ in range(6):
        clock.now += MEMBERSHIP_CHECK_S / 2
        r.poll_once(0)
    assert asked == [] and built == []


def test_a_quiet_consumer_still_holding_partitions_but_not_in_its_group_is_rebuilt():
    # Seen after a Kafka freeze: the client kept its assignment while the broker showed the group EMPTY.
    r, clock, built = membership_runner(lambda: set())
    r.consumer.assigned = [TopicPartition(topics.QUESTIONS_PENDING, 0)]
    clock.now += MEMBERSHIP_CHECK_S + 1
    r.poll_once(0)
    assert len(built) == 1


def test_a_replaced_clients_rebalance_events_leave_the_new_clients_state_alone():
    # The old client's close() (on its own thread) revokes what it held; the new one may hold it now.
    r, _clock, _built = membership_runner(lambda: set())
    old = r.consumer
    r._rebuild_consumer()
    partition_0 = TopicPartition(topics.QUESTIONS_PENDING, 0)
    r.consumer.fail_commits = 1  # the new client's commit is owed, to be retried
    r._commit((topics.QUESTIONS_PENDING, 0, 8))
    for event in ("revoke", "lost"):
        old.callbacks[event](old, [partition_0])
    old.callbacks["assign"](old, [partition_0])
    assert r.uncommitted == {(topics.QUESTIONS_PENDING, 0): 9} and r._assigned == []
    wait_until_closed(old)


def wait_until_closed(consumer, timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while not consumer.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert consumer.closed
