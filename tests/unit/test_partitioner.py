"""`cachebus publish` partitions like Java's default partitioner (murmur2), the one
schemas/README.md tells non-Java producers to use (librdkafka: murmur2_random)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner, murmur2

ROOT = Path(__file__).resolve().parents[2]
# Utils.murmur2 and Utils.toPositive(murmur2) % 6 of kafka-clients 4.1.1 (the Java
# client, run on these UTF-8 keys); the first three are vectors of Kafka's UtilsTest.
JAVA = [
    ("21", -973932308, 0),
    ("foobar", -790332482, 0),
    ("a-little-bit-long-string", -985981536, 2),
    ("abc", 479470107, 3),
    ("doc-0", -1299782194, 4),
    ("doc-1", 313766495, 5),
    ("kb/article-1042", -1945693325, 3),
    ("страница*{1}", 1150210951, 1),
]


@pytest.mark.parametrize(("key", "java_hash", "java_partition"), JAVA)
def test_aiokafka_default_partitioner_is_javas(
    key: str, java_hash: int, java_partition: int
) -> None:
    raw = key.encode("utf-8")
    assert murmur2(raw) == java_hash & 0xFFFFFFFF
    partitions = list(range(6))
    assert DefaultPartitioner()(raw, partitions, partitions) == java_partition


def test_publish_uses_the_default_partitioner() -> None:
    """No custom partitioner anywhere in the worker's producers."""
    for path in (ROOT / "worker").glob("*.py"):
        assert "partitioner=" not in path.read_text("utf-8"), path


def test_docs_name_the_partitioner_for_librdkafka() -> None:
    text = (ROOT / "schemas" / "README.md").read_text("utf-8")
    assert "partitioner=murmur2_random" in text
    assert "-X topic.partitioner=murmur2_random" in text
