"""One partitioner everywhere: a question_id lands where Java's default partitioner (the Flink job's
Kafka sink) would put it, whoever produces it."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from common.kafka import ConfirmedProducer
from common.partitioner import partition_for
from tests.conftest import wait_until
from tests.fakes import question

PARTITIONS = 6


def test_confirmed_producer_puts_each_key_where_java_would(stack):
    topic = f"it-partitioner-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(15)
    messages = [question(f"where does question {i} go?") for i in range(120)]
    producer = ConfirmedProducer(stack.kafka_bootstrap, "it-partitioner")
    for message in messages:
        producer.send(topic, message)
    producer.flush(30)

    consumer = Consumer(
        {
            "bootstrap.servers": stack.kafka_bootstrap,
            "group.id": f"t-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    landed: dict[bytes, int] = {}
    try:

        def all_landed():
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                landed[msg.key()] = msg.partition()
            return len(landed) == len(messages)

        wait_until(all_landed, 60, interval_s=0, what="every message consumed")
    finally:
        consumer.close()
        admin.delete_topics([topic])
    expected = {m.key: partition_for(m.key, PARTITIONS) for m in messages}
    assert landed == expected
    assert len(set(expected.values())) == PARTITIONS  # the keys spread, so the check means something
