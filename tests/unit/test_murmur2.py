import pytest

from common.partitioner import murmur2, partition_for


@pytest.mark.parametrize(
    ("data", "expected"),
    [  # Kafka's own vectors: UtilsTest.testMurmur2 in the Java client
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_the_java_client(data, expected):
    assert murmur2(data) == expected


def test_partition_is_the_positive_hash_modulo_the_partition_count():
    assert partition_for(b"21", 3) == (-973932308 & 0x7FFFFFFF) % 3
    assert {partition_for(bytes([i]), 3) for i in range(64)} == {0, 1, 2}
