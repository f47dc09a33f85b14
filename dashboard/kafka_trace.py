"""Reads one question's records from Kafka: in each topic only the partition its key hashes to,
from a given time on, bounded by a deadline and a number of records scanned."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from confluent_kafka import Consumer, TopicPartition

from common import topics
from common.kafka import position
from common.partitioner import partition_for
from dashboard.trace import Record


@dataclass
class TraceRead:
    records: list[Record] = field(default_factory=list)
    scanned: int = 0
    # True when the deadline or the record budget ended the read before every partition's end.
    partial: bool = False
    missing_topics: list[str] = field(default_factory=list)


class KafkaTraceReader:
    def __init__(self, bootstrap_servers: str, *, timeout_s: float, max_records: int) -> None:
        self.bootstrap, self.timeout_s, self.max_records = bootstrap_servers, timeout_s, max_records

    def _consumer(self) -> Consumer:
        # assign() only: no group is joined and nothing is committed; the id is throwaway.
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"dashboard-trace-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
            }
        )

    def read(self, question_id: str, since: datetime) -> TraceRead:
        key = question_id.encode("utf-8")
        deadline = time.monotonic() + self.timeout_s

        def left() -> float:  # every broker call shares the one deadline
            return max(0.1, deadline - time.monotonic())

        consumer = self._consumer()
        try:
            metadata = consumer.list_topics(timeout=left())
            result = TraceRead(missing_topics=[t for t in topics.ALL_TOPICS if t not in metadata.topics])
            wanted = [
                TopicPartition(t, partition_for(key, len(metadata.topics[t].partitions)), int(since.timestamp() * 1000))
                for t in topics.ALL_TOPICS
                if t in metadata.topics and metadata.topics[t].partitions
            ]
            starts = consumer.offsets_for_times(wanted, timeout=left())
            ends: dict[tuple[str, int], int] = {}
            assignment = []
            for tp in starts:
                _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=left())
                # offset -1: no record at or after `since` in this partition.
                if 0 <= tp.offset < high:
                    ends[(tp.topic, tp.partition)] = high
                    assignment.append(tp)
            if not assignment:
                return result
            consumer.assign(assignment)
            while ends and time.monotonic() < deadline and result.scanned < self.max_records:
                msg = consumer.poll(0.2)
                if msg is None or msg.error():
                    continue
                topic, partition, offset = position(msg)
                result.scanned += 1
                if msg.key() == key:
                    result.records.append(Record(topic, partition, offset, msg.timestamp()[1], msg.value()))
                if offset + 1 >= ends.get((topic, partition), 0):
                    ends.pop((topic, partition), None)
            result.partial = bool(ends)
            return result
        finally:
            consumer.close()
