"""Java's partitioner for keyed records, in pure Python: the formula the Kafka Java clients (and so
the Flink job's Kafka sink) use, and librdkafka's `murmur2_random` too (common/kafka.py). Every
message is keyed by its question_id, so `partition_for` says which one partition of a topic holds
all of a question's records (the dashboard's trace reads only that one); the tests check it against
Kafka's own vectors and against where the real broker's producers put keys."""

from __future__ import annotations

MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """org.apache.kafka.common.utils.Utils.murmur2, as a signed 32-bit int like Java returns it."""
    m, r, seed = 0x5BD1E995, 24, 0x9747B28C
    length = len(data)
    h = (seed ^ length) & MASK
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & MASK
        k ^= k >> r
        k = (k * m) & MASK
        h = (h * m) & MASK
        h ^= k
    tail = length - length % 4
    rest = length % 4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & MASK
    h ^= h >> 13
    h = (h * m) & MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """Utils.toPositive(Utils.murmur2(key)) % partitions: where a Java producer puts a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
