"""Reads what a person watching the pipeline wants from Kafka: topics, consumer lag, latest messages."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from confluent_kafka import OFFSET_INVALID, Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from common.kafka import position


@dataclass(frozen=True)
class TopicSummary:
    name: str
    partitions: int
    messages: int  # retained messages: high watermark minus low, over all partitions
    end_offsets: dict[int, int]


@dataclass(frozen=True)
class GroupLag:
    group: str
    topic: str
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    value: str

    def pretty_value(self) -> str:
        try:
            return json.dumps(json.loads(self.value), indent=2, ensure_ascii=False)
        except ValueError:
            return self.value


class KafkaBrowser:
    def __init__(self, bootstrap_servers: str, timeout_s: float = 5.0) -> None:
        self.bootstrap = bootstrap_servers
        self.timeout_s = timeout_s
        self.admin = AdminClient({"bootstrap.servers": bootstrap_servers})

    def _consumer(self) -> Consumer:
        # A throwaway group id: reading never commits and never joins a pipeline group.
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"kafka-ui-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )

    def topics(self) -> list[TopicSummary]:
        metadata = self.admin.list_topics(timeout=self.timeout_s)
        names = sorted(t for t in metadata.topics if not t.startswith("__"))
        consumer = self._consumer()
        try:
            summaries = []
            for name in names:
                ends, total = {}, 0
                for partition in metadata.topics[name].partitions:
                    low, high = consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=self.timeout_s)
                    ends[partition] = high
                    total += high - low
                summaries.append(TopicSummary(name, len(ends), total, ends))
            return summaries
        finally:
            consumer.close()

    def lags(self, summaries: list[TopicSummary]) -> list[GroupLag]:
        ends = {s.name: s.end_offsets for s in summaries}
        groups = [
            g.group_id
            for g in self.admin.list_consumer_groups(request_timeout=self.timeout_s).result().valid
            if not g.group_id.startswith("kafka-ui-")
        ]
        lags = []
        for group in sorted(groups):
            future = self.admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group)], request_timeout=self.timeout_s
            )[group]
            committed: dict[str, int] = {}
            for tp in future.result().topic_partitions or []:
                if tp.offset != OFFSET_INVALID and tp.topic in ends:
                    committed[tp.topic] = committed.get(tp.topic, 0) + tp.offset
            for topic, offset in sorted(committed.items()):
                lags.append(GroupLag(group, topic, offset, sum(ends[topic].values())))
        return lags

    def latest(self, topic: str, limit: int) -> list[Record]:
        """The newest `limit` messages of each partition, newest first overall (at most `limit`)."""
        metadata = self.admin.list_topics(topic=topic, timeout=self.timeout_s)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise KeyError(topic)
        consumer = self._consumer()
        try:
            assignments, remaining = [], {}
            for partition in metadata.topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=self.timeout_s)
                if high > low:
                    start = max(low, high - limit)
                    assignments.append(TopicPartition(topic, partition, start))
                    remaining[partition] = high
            if not assignments:
                return []
            consumer.assign(assignments)
            records: list[Record] = []
            deadline = time.monotonic() + self.timeout_s
            while remaining and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                _, partition, offset = position(msg)
                key = msg.key()
                records.append(
                    Record(
                        partition,
                        offset,
                        msg.timestamp()[1],
                        key.decode("utf-8", "replace") if key else None,
                        (msg.value() or b"").decode("utf-8", "replace"),
                    )
                )
                if offset + 1 >= remaining.get(partition, 0):
                    remaining.pop(partition, None)
            records.sort(key=lambda r: r.timestamp_ms, reverse=True)
            return records[:limit]
        finally:
            consumer.close()
