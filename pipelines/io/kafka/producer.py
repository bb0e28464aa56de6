"""Producing NDJSON events to Kafka in bulk, keyed by user id (one user's events stay in one partition).

Client configs (``config``) are passed to librdkafka as they are; their values may be secrets and
are never logged or put in error messages (only option names, :func:`option_names`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec
from confluent_kafka import (
    KafkaError,
    KafkaException,
    Producer,
)

from pipelines.contract.ids import user_key_bytes
from pipelines.io.kafka.clientlog import KAFKA_CLIENT_LOG
from pipelines.io.kafka.errors import KafkaSourceError


class _UserIdOnly(msgspec.Struct):
    user_id: str


_USER_ID_DECODER = msgspec.json.Decoder(_UserIdOnly)


def key_by_user_id(line: bytes) -> bytes | None:
    """Partition key of an NDJSON event: its ``user_id`` (one user's events stay in one
    partition, in order). Lines without a readable user id get no key (any partition).
    """
    try:
        user_id = _USER_ID_DECODER.decode(line).user_id
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    # NFC like the decoder (pipelines.contract.events), so that spellings of one user share a partition.
    return user_key_bytes(user_id)


#: Producer defaults for bulk and sink producers; ``config`` overrides any of them (security, tuning).
PRODUCER_DEFAULTS: dict[str, Any] = {
    "compression.type": "lz4",
    "linger.ms": 20,  # fill batches: one produce request carries many records
    "batch.num.messages": 100_000,
    # Uncompressed bytes per batch (the librdkafka default). Larger batches can exceed a Kafka broker's
    # max.message.bytes (1 MiB by default, checked against the compressed batch) and then fail delivery.
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 1_000_000,
    "enable.idempotence": True,  # retries neither duplicate nor reorder records
    "partitioner": "murmur2_random",  # same key -> same partition as Java clients
}


def producer_config(bootstrap: str, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Options of a librdkafka producer: :data:`PRODUCER_DEFAULTS`, the brokers, then ``config`` (wins)."""
    return {**PRODUCER_DEFAULTS, "bootstrap.servers": bootstrap, "logger": KAFKA_CLIENT_LOG, **(config or {})}


def option_names(config: Mapping[str, Any]) -> str:
    """The option *names* of a client config, for log lines: values may be secrets and are never shown."""
    return ", ".join(sorted(config)) or "(none)"


def produce_lines(
    bootstrap: str,
    topic: str,
    lines: Iterable[bytes],
    *,
    key_fn: Callable[[bytes], bytes | None] | None = None,
    config: Mapping[str, Any] | None = None,
    flush_timeout_s: float = 60.0,
    metadata_timeout_s: float = 10.0,
) -> int:
    """Produce each line as one record (lz4, batched, idempotent), flush, and return the count.

    Records go out in the order of ``lines``; records with the same key keep that order in their partition.

    ``key_fn(line)`` gives the record key (e.g. :func:`key_by_user_id`); without
    it records have no key and the client spreads them over the partitions.
    Raises :class:`KafkaSourceError` if any record was not acknowledged, so a
    returned count is a count of records stored by the broker.
    """
    records = ((key_fn(line), line) for line in lines) if key_fn is not None else ((None, line) for line in lines)
    return produce_records(
        bootstrap, topic, records, config=config, flush_timeout_s=flush_timeout_s, metadata_timeout_s=metadata_timeout_s
    )


def produce_records(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    *,
    config: Mapping[str, Any] | None = None,
    flush_timeout_s: float = 60.0,
    metadata_timeout_s: float = 10.0,
) -> int:
    """Produce ``(key, value)`` pairs (lz4, batched, idempotent), flush, and return the count.

    Same guarantees as :func:`produce_lines`. Only failed deliveries call back into Python
    (``delivery.report.only.error``): a per-record callback would cost more than the produce call.
    """
    errors: list[str] = []  # the first few delivery errors, for the message
    failed = 0

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        nonlocal failed
        if err is not None:
            failed += 1
            if len(errors) < 5:
                errors.append(str(err))

    producer = Producer(
        {**producer_config(bootstrap, config), "delivery.report.only.error": True, "on_delivery": on_delivery}
    )
    try:  # fail fast with a clear error instead of timing out every message
        producer.list_topics(timeout=metadata_timeout_s)
    except KafkaException as err:
        raise KafkaSourceError(f"cannot reach Kafka broker(s) {bootstrap} to produce to {topic!r}: {err}") from err
    produce = producer.produce
    sent = 0
    for key, value in records:
        try:
            produce(topic, value, key)
        except BufferError:  # local queue full: let deliveries drain, then retry once the queue has room
            while True:
                producer.poll(0.05)
                try:
                    produce(topic, value, key)
                    break
                except BufferError:
                    continue
        sent += 1
        if not sent & 0x3FFF:
            producer.poll(0)  # serve (error) callbacks and let the client's queue progress
    left = producer.flush(flush_timeout_s)
    if left or failed:
        raise KafkaSourceError(
            f"produce to {topic!r} on {bootstrap}: {sent - failed - left} of {sent} records acknowledged "
            f"({left} still queued after {flush_timeout_s}s, {failed} failed: {'; '.join(errors)})"
        )
    return sent
