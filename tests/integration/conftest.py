from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

try:  # tests/ as a package (rootdir on sys.path) or as plain directories (pytest's prepend import mode)
    from tests.integration.broker import TansuBroker
except ImportError:
    from broker import TansuBroker  # type: ignore[no-redef]


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[TansuBroker]:
    """One tansu broker for the session; ``create_topic(partitions=N)`` gives each test its own topic."""
    with TansuBroker() as broker:
        yield broker


def _read_topic(bootstrap: str, topic: str, *, timeout_s: float = 15.0) -> list[Message]:
    """Every record of every partition of ``topic``, partition by partition, in offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "test-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.queue.backoff.ms": 5,
        }
    )
    try:
        parts = sorted(consumer.list_topics(timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        records: dict[int, list[Message]] = {p: [] for p in parts}
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(at_end) < len(parts):
            assert time.monotonic() < deadline, f"topic {topic} not read to its end in {timeout_s}s"
            for m in consumer.consume(10_000, 0.1):
                err = m.error()
                if err is None:
                    records[m.partition()].append(m)  # type: ignore[index]
                    at_end.discard(m.partition())  # type: ignore[arg-type]
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())  # type: ignore[arg-type]
        return [m for p in parts for m in records[p]]
    finally:
        consumer.close()


@pytest.fixture()
def read_topic() -> Callable[..., list[Message]]:
    """``read_topic(bootstrap, topic)``: every record of the topic (partition by partition, offset order)."""
    return _read_topic
