"""Kafka outputs of the flow: dead letters (:class:`KafkaDeadLetterSink`) and stage transitions
(:class:`KafkaTransitionsSink`), for the systems that listen on Kafka rather than read ClickHouse.

Message formats (``docs/kafka.md``):

* dead letter: value = the original payload bytes, unchanged; key = none; headers
  ``lifecycle.reason`` (a :class:`~pipelines.contract.events.RejectReason` value), ``lifecycle.detail``,
  ``lifecycle.source.topic`` (topic, or file path for file inputs), ``lifecycle.source.partition``
  and ``lifecycle.source.offset`` (decimal ASCII; partition -1 and the 1-based line number for
  files), ``lifecycle.pipeline.version``; all UTF-8. A payload larger than the producer's
  ``message.max.bytes`` is cut to fit and carries ``lifecycle.payload.truncated`` = its original
  length. Both outputs keep at most ``LIFECYCLE_MAX_DEAD_LETTER_BYTES`` of a payload (default
  4 KiB; ``detail`` then gives the full size).
* transition: one JSON object per ``stage_transitions`` row, key = ``user_id`` (UTF-8), so one
  user's transitions are in one partition, in order: ``user_id``, ``from_stage`` (``none`` for a
  user's first stage), ``to_stage``, ``at`` (ISO-8601 UTC, ms), ``churn_risk``,
  ``purchase_propensity`` (6 decimals), ``reasons`` (list of strings), ``model_version``,
  ``version`` (the event-time version of the row, as in the table).

Delivery, step by step (the same contract as :mod:`pipelines.io.store.sink`):

1. ``write_batch`` hands every message to the librdkafka producer (lz4, batched, idempotent:
   its retries neither duplicate nor reorder), which sends in the background.
2. ``snapshot`` (Bytewax calls it at the end of every epoch, *before* it commits the epoch)
   waits until every message handed over so far is acknowledged by the broker, and raises
   :class:`KafkaSinkError` if any delivery failed or did not finish in time. So an epoch is
   only recorded as done when its messages are on the broker; a failure stops the worker
   before the commit, and the restart replays the epoch.
3. ``close`` (end of a finite input) does the same for what is left.

So delivery is at least once: a replay after a crash re-sends that epoch's messages. Consumers
deduplicate transitions by (``user_id``, ``to_stage``, ``version``) and dead letters by
(``source.topic``, ``source.partition``, ``source.offset``, ``reason``), the keys of the tables.
Client options (``config``) are passed to librdkafka; their values may be secrets and are never
logged or put in error messages.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, KafkaException, Producer

from pipelines.contract.events import Rejection
from pipelines.core.rows import Records
from pipelines.io.kafka.producer import option_names, producer_config
from pipelines.io.kafka.url import parse_kafka_url

log = logging.getLogger(__name__)

X = TypeVar("X")
Headers = list[tuple[str, str | bytes | None]]

#: Headers of a dead letter (the names are part of the contract in docs/kafka.md).
H_REASON = "lifecycle.reason"
H_DETAIL = "lifecycle.detail"
H_TOPIC = "lifecycle.source.topic"
H_PARTITION = "lifecycle.source.partition"
H_OFFSET = "lifecycle.source.offset"
H_VERSION = "lifecycle.pipeline.version"
H_TRUNCATED = "lifecycle.payload.truncated"

#: Room left for headers and framing when an oversized payload is cut to ``message.max.bytes``.
_HEADER_ROOM = 16_384
_DEFAULT_MAX_MESSAGE_BYTES = 1_000_000  # librdkafka's default message.max.bytes


class KafkaSinkError(RuntimeError):
    """Messages were not delivered: the epoch must not commit."""


class _Deliveries:
    """Delivery-failure bookkeeping, the producer's callback (held apart from the partition: no
    reference cycle, so a dropped partition's producer is destroyed at once).
    """

    def __init__(self) -> None:
        self.failed = 0
        self.errors: list[str] = []  # the first few delivery errors, for the exception

    def __call__(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.failed += 1
            if len(self.errors) < 5:
                self.errors.append(str(err))


class _ProducerPartition(StatefulSinkPartition[X, None], Generic[X]):
    """One producer; flushes and checks deliveries at every snapshot and at close."""

    def __init__(self, bootstrap: str, topic: str, config: Mapping[str, Any], flush_timeout_s: float) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._flush_timeout_s = flush_timeout_s
        self._deliveries = _Deliveries()
        self.sent = 0
        opts = producer_config(bootstrap, config)
        self._max_bytes = int(opts.get("message.max.bytes", _DEFAULT_MAX_MESSAGE_BYTES))
        # Only failed deliveries call back into Python: a callback per message would cost more than producing it.
        self._producer = Producer({**opts, "delivery.report.only.error": True, "on_delivery": self._deliveries})
        log.info("kafka sink to %r on %s (client options: %s)", topic, bootstrap, option_names(config))

    @property
    def failed(self) -> int:
        """Deliveries that failed so far (the partition raises at its next snapshot or close)."""
        return self._deliveries.failed

    def _produce(self, value: bytes, key: bytes | None = None, headers: Headers | None = None) -> None:
        while True:
            try:
                self._producer.produce(self._topic, value, key, headers=headers)
                break
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(0.05)
        self.sent += 1

    def _deliver(self) -> None:
        """Wait for every message handed over so far; raise if any was not delivered."""
        left = self._producer.flush(self._flush_timeout_s)
        d = self._deliveries
        if left or d.failed:
            # Sticky: a failed message is not re-sent by us; the epoch replay after the restart re-sends it.
            raise KafkaSinkError(
                f"kafka sink to {self._topic!r} on {self._bootstrap}: {d.failed} of {self.sent} message(s) "
                f"failed, {left} not acknowledged after {self._flush_timeout_s}s: {'; '.join(d.errors)}"
            )

    def snapshot(self) -> None:
        self._deliver()  # before the epoch commits: see the module docstring, step 2
        return None

    def close(self) -> None:
        self._deliver()


class _DeadLetterPartition(_ProducerPartition[list[Rejection]]):
    def __init__(self, *args: Any, pipeline_version: bytes) -> None:
        super().__init__(*args)
        self._version = pipeline_version

    def write_batch(self, items: list[list[Rejection]]) -> None:
        for rejects in items:
            for r in rejects:
                self._produce_one(r)
        self._producer.poll(0)  # serve error callbacks

    def _produce_one(self, r: Rejection) -> None:
        headers: Headers = [
            (H_REASON, r.reason.value.encode()),
            (H_DETAIL, r.detail.encode("utf-8", "replace")),
            (H_TOPIC, r.source.encode("utf-8", "replace")),
            (H_PARTITION, str(r.partition).encode()),
            (H_OFFSET, str(r.offset).encode()),
            (H_VERSION, self._version),
        ]
        payload = bytes(r.payload)
        try:
            self._produce(payload, None, headers)
        except KafkaException as err:
            kerr = err.args[0] if err.args else None
            if not (isinstance(kerr, KafkaError) and kerr.code() == KafkaError.MSG_SIZE_TOO_LARGE):
                raise
            limit = max(0, self._max_bytes - _HEADER_ROOM)
            log.warning("dead letter %s: payload of %d bytes cut to %d for Kafka", r.position, len(payload), limit)
            self._produce(payload[:limit], None, [*headers, (H_TRUNCATED, str(len(payload)).encode())])


class KafkaDeadLetterSink(FixedPartitionedSink[list[Rejection], None]):
    """Dead letters to a Kafka topic: the original bytes, with why and where in headers.

    Items are ``(key, list[Rejection])``; every key maps to one partition (one producer).
    Delivery: at least once, acknowledged before each epoch commits (module docstring).
    """

    PART = "dead-letters"

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        config: Mapping[str, Any] | None = None,
        pipeline_version: str,
        flush_timeout_s: float = 60.0,
    ) -> None:
        if not topic:
            raise ValueError("dead-letter topic must not be empty")
        self.bootstrap = bootstrap
        self.topic = topic
        self._config = dict(config or {})
        self._version = pipeline_version.encode()
        self._flush_timeout_s = flush_timeout_s

    @classmethod
    def from_url(
        cls, url: str, *, config: Mapping[str, Any] | None = None, pipeline_version: str
    ) -> KafkaDeadLetterSink:
        """The sink for ``kafka://HOST:PORT[,HOST:PORT]/TOPIC``."""
        bootstrap, topic = parse_kafka_url(url)
        return cls(bootstrap, topic, config=config, pipeline_version=pipeline_version)

    def list_parts(self) -> list[str]:
        return [self.PART]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _DeadLetterPartition:
        return _DeadLetterPartition(
            self.bootstrap, self.topic, self._config, self._flush_timeout_s, pipeline_version=self._version
        )


class _TransitionMessage(msgspec.Struct, gc=False):
    user_id: str
    from_stage: str
    to_stage: str
    at: str
    churn_risk: float
    purchase_propensity: float
    reasons: list[str]
    model_version: str
    version: int
    taxonomy: str
    taxonomy_version: int
    action: str
    action_rule: str
    action_at: str | None


_ENCODER = msgspec.json.Encoder()
TRANSITIONS_TABLE = "stage_transitions"


def transition_messages(data: pa.Table) -> list[tuple[bytes, bytes]]:
    """``stage_transitions`` rows -> (key, JSON value) pairs, in row order (pure; the sink's format)."""
    if data.num_rows == 0:
        return []
    at = pc.strftime(data.column("at"), format="%Y-%m-%dT%H:%M:%S")  # timestamp[ms, UTC]: "...T12:15:03.123"
    cols = {
        "user_id": data.column("user_id").to_pylist(),
        "from_stage": data.column("from_stage").to_pylist(),
        "to_stage": data.column("to_stage").to_pylist(),
        "at": [f"{s}Z" for s in at.to_pylist()],
        "churn_risk": _rounded(data.column("churn_risk")),
        "purchase_propensity": _rounded(data.column("purchase_propensity")),
        "reasons": data.column("reasons").to_pylist(),
        "model_version": data.column("model_version").to_pylist(),
        "version": data.column("version").to_pylist(),
        "taxonomy": data.column("taxonomy").to_pylist(),
        "taxonomy_version": data.column("taxonomy_version").to_pylist(),
        "action": data.column("action").to_pylist(),
        "action_rule": data.column("action_rule").to_pylist(),
        "action_at": [None if s is None else f"{s}Z" for s in _iso(data.column("action_at"))],
    }
    out = []
    for row in zip(*cols.values(), strict=True):
        msg = _TransitionMessage(*row)
        out.append((msg.user_id.encode(), _ENCODER.encode(msg)))
    return out


def _iso(col: pa.ChunkedArray) -> list[str | None]:
    return pc.strftime(col, format="%Y-%m-%dT%H:%M:%S").to_pylist()  # nulls stay null


def _rounded(col: pa.ChunkedArray) -> list[float]:
    # float32 scores as short decimals (0.731, not 0.7310000061988831)
    return np.round(col.to_numpy(zero_copy_only=False).astype(np.float64), 6).tolist()


class _TransitionsPartition(_ProducerPartition[Records]):
    def write_batch(self, items: list[Records]) -> None:
        for rec in items:
            if rec.table != TRANSITIONS_TABLE:
                continue  # the sink may share a stream with other tables' records
            for key, value in transition_messages(rec.data):
                self._produce(value, key)
        self._producer.poll(0)  # serve error callbacks


class KafkaTransitionsSink(FixedPartitionedSink[Records, None]):
    """Stage transitions to a Kafka topic, one JSON message per transition, keyed by user id.

    Items are ``(key, Records)``; only ``stage_transitions`` records are produced, others are
    ignored. Delivery: at least once, acknowledged before each epoch commits (module docstring).
    """

    PART = "transitions"

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        config: Mapping[str, Any] | None = None,
        flush_timeout_s: float = 60.0,
    ) -> None:
        if not topic:
            raise ValueError("transitions topic must not be empty")
        self.bootstrap = bootstrap
        self.topic = topic
        self._config = dict(config or {})
        self._flush_timeout_s = flush_timeout_s

    @classmethod
    def from_url(cls, url: str, *, config: Mapping[str, Any] | None = None) -> KafkaTransitionsSink:
        """The sink for ``kafka://HOST:PORT[,HOST:PORT]/TOPIC``."""
        bootstrap, topic = parse_kafka_url(url)
        return cls(bootstrap, topic, config=config)

    def list_parts(self) -> list[str]:
        return [self.PART]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _TransitionsPartition:
        return _TransitionsPartition(self.bootstrap, self.topic, self._config, self._flush_timeout_s)
