"""Topic administration and inspection: create a topic if missing, count its records.

Client configs (``config``) are passed to librdkafka as they are; their values may be secrets and are
never logged or put in error messages (only option names).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pipelines.io.kafka.errors import KafkaSourceError
from pipelines.io.kafka.source import KafkaBatchSource

log = logging.getLogger(__name__)


def ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    timeout_s: float = 10.0,
) -> bool:
    """Create ``topic`` with ``partitions`` (default 1) if it does not exist; True if it was created.

    An existing topic is left as it is (a different partition count is logged, not changed:
    tansu has no CreatePartitions, and adding partitions to Kafka moves keys). The replication
    factor is the broker's default. Returns once the metadata shows every partition.
    """
    if partitions is not None and partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    admin = AdminClient({"bootstrap.servers": bootstrap, **(config or {})})
    existing = _partition_count(admin, bootstrap, topic, timeout_s)
    if existing is not None:
        if partitions is not None and existing != partitions:
            log.warning("kafka topic %r exists with %d partitions (asked for %d): kept", topic, existing, partitions)
        return False
    want = partitions or 1
    fut = admin.create_topics([NewTopic(topic, num_partitions=want, replication_factor=-1)])[topic]
    try:
        fut.result(timeout=timeout_s)
    except KafkaException as err:
        kerr = err.args[0] if err.args else None
        if not (isinstance(kerr, KafkaError) and kerr.code() == KafkaError.TOPIC_ALREADY_EXISTS):  # lost a race
            raise KafkaSourceError(f"cannot create Kafka topic {topic!r} on {bootstrap}: {err}") from err
    deadline = time.monotonic() + timeout_s
    while _partition_count(admin, bootstrap, topic, timeout_s) != want:
        if time.monotonic() > deadline:
            raise KafkaSourceError(f"Kafka topic {topic!r} on {bootstrap} has no {want} partitions after {timeout_s}s")
        time.sleep(0.05)
    log.info("created kafka topic %r with %d partition(s) on %s", topic, want, bootstrap)
    return True


def _partition_count(admin: AdminClient, bootstrap: str, topic: str, timeout_s: float) -> int | None:
    try:
        # All topics: asking for one topic auto-creates it on brokers that allow it.
        meta = admin.list_topics(timeout=timeout_s).topics.get(topic)
    except KafkaException as err:
        raise KafkaSourceError(f"cannot reach Kafka broker(s) {bootstrap}: {err}") from err
    if meta is None or meta.error is not None:
        return None
    return len(meta.partitions)


def count_records(
    bootstrap: str, topic: str, *, config: Mapping[str, Any] | None = None, timeout_s: float = 30.0
) -> int:
    """Records in every partition of ``topic``, by reading it to its end (not ListOffsets: tansu's can be short)."""
    source = KafkaBatchSource(bootstrap, topic, eof_exit=True, config=config, batch_events=100_000)
    total = 0
    deadline = time.monotonic() + timeout_s
    for name in source.list_parts():
        with contextlib.closing(source.build_part("count", name, None)) as part:
            while True:
                if time.monotonic() > deadline:
                    raise KafkaSourceError(f"counting the records of {topic!r} took more than {timeout_s}s")
                try:
                    total += sum(len(b.payloads) for b in part.next_batch())
                except StopIteration:
                    break
    return total
