"""Reads what a person watching the pipeline wants from Kafka: topics, consumer lag, latest messages."""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import OFFSET_INVALID, Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from common.kafka import position

T = TypeVar("T")


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
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


def lags_by_topic(partition_lags: list[PartitionLag], summaries: list[TopicSummary]) -> list[GroupLag]:
    """Per group and topic it committed on: its committed offsets summed, against the end offsets of
    all the topic's partitions (a partition it never committed on is all lag)."""
    ends = {s.name: sum(s.end_offsets.values()) for s in summaries}
    committed: dict[tuple[str, str], int] = {}
    for p in partition_lags:
        committed[(p.group, p.topic)] = committed.get((p.group, p.topic), 0) + p.committed
    return [GroupLag(group, topic, offset, ends[topic]) for (group, topic), offset in sorted(committed.items())]


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


def renews_admin_on_failure(method: Callable[..., T]) -> Callable[..., T]:
    """A call that fails on Kafka gets the browser a new admin client before the error goes on.

    After a broker restart the long-lived librdkafka admin client can keep answering every request
    with _TIMED_OUT while a new client answers at once (seen in the e2e Kafka-outage test): the page
    and the lag metric would stay broken until the browser restarted."""

    @functools.wraps(method)
    def call(self: KafkaBrowser, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except (KafkaException, TimeoutError):
            self.admin = AdminClient({"bootstrap.servers": self.bootstrap})
            raise

    return call


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

    @renews_admin_on_failure
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
        return lags_by_topic(self.partition_lags(summaries), summaries)

    @renews_admin_on_failure
    def groups(self) -> list[str]:
        """The consumer groups the broker knows, without this browser's own throwaway ones."""
        listed = self.admin.list_consumer_groups(request_timeout=self.timeout_s).result(timeout=self.timeout_s).valid
        return sorted(g.group_id for g in listed if not g.group_id.startswith("kafka-ui-"))

    @renews_admin_on_failure
    def partition_lags(self, summaries: list[TopicSummary], only: Iterable[str] | None = None) -> list[PartitionLag]:
        """Each group's committed offset against the end offset, per partition of every topic it
        committed on (a partition it never committed on: committed 0, all lag, as on the page).
        `only`: these groups, when the broker knows them."""
        ends = {s.name: s.end_offsets for s in summaries}
        lags = []
        for group in self._groups(only):
            future = self.admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group)], request_timeout=self.timeout_s
            )[group]
            committed = {
                (tp.topic, tp.partition): tp.offset
                for tp in future.result().topic_partitions or []
                if tp.offset != OFFSET_INVALID and tp.partition in ends.get(tp.topic, {})
            }
            for topic in sorted({topic for topic, _ in committed}):
                for partition, end in sorted(ends[topic].items()):
                    lags.append(PartitionLag(group, topic, partition, committed.get((topic, partition), 0), end))
        return sorted(lags, key=lambda p: (p.group, p.topic, p.partition))

    def _groups(self, only: Iterable[str] | None) -> list[str]:
        known = self.groups()
        return known if only is None else [group for group in known if group in set(only)]

    @renews_admin_on_failure
    def group_members(self, only: Iterable[str] | None = None) -> dict[str, int]:
        """How many members each consumer group has now (0: nobody consumes for it)."""
        groups = self._groups(only)
        if not groups:
            return {}
        futures = self.admin.describe_consumer_groups(groups, request_timeout=self.timeout_s)
        return {group: len(future.result(timeout=self.timeout_s).members) for group, future in futures.items()}

    @renews_admin_on_failure
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
