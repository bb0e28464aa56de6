"""Kafka as a batch source (:class:`KafkaBatchSource`); producing is :mod:`pipelines.io.kafka.producer`.

The source hands the flow one :class:`~pipelines.contract.events.RawBatch` per poll of a
Kafka partition, not one item per message (Bytewax's per-item overhead
dominates otherwise, DESIGN.md); the stock ``bytewax.connectors.kafka`` source
is per message and is deliberately not used.

Delivery and resume semantics (exactly what the code does):

* Each Kafka partition of the topic is one Bytewax source partition with its own
  ``Consumer``, attached with ``assign()`` at an explicit offset. There is no
  consumer-group membership: no join, no rebalancing, and **no offsets are
  committed to Kafka** (``enable.auto.commit=false``, nothing calls ``commit``).
  ``group.id`` (``group_id``, ``LIFECYCLE_KAFKA_GROUP``) is only a client label that
  librdkafka requires.
* The only record of progress is the Bytewax snapshot of each partition: the
  offset of the *next* record to hand on, i.e. the offset of the last record
  handed to the flow + 1 (or the end offset the broker reported, when the
  partition was caught up). Before the first record or end-of-partition it is
  the logical start (``earliest``/``latest``). With a recovery store a restarted
  flow resumes each partition exactly at the offset of its last committed
  epoch, and the shard state of that same epoch is restored with it: the state
  applies every record once. Records read after that epoch are read again, so
  their store writes may repeat (the sink is at-least-once; the tables collapse
  repeats under ``FINAL``). Without a recovery store every run starts at
  ``start`` (``LIFECYCLE_KAFKA_START``) (:func:`parse_kafka_start`): ``earliest`` (the oldest
  retained record), ``latest`` (records produced after the partition was
  assigned; tansu may also return the last produce batch before it, DESIGN.md
  section 4), or a time (ISO-8601 with offset, or epoch ms): the first record
  whose Kafka timestamp (producer create time or broker append time, not the
  event's ``ts``) is at or after it, and everything after that record. The
  offset comes from the broker's time index (``offsets_for_times``); records
  before the first one at or after the time are then skipped client-side too,
  because tansu answers every time lookup with offset 0. On Kafka that skip
  finds nothing to skip. If no record is that new yet, the partition starts at
  the end.
* Within a run, every record with a value is handed on once, in offset order,
  in batches of at most ``batch_events``. Batches are *aligned*: one batch never
  spans a multiple of ``batch_events`` in offset space, and a batch ends early
  only when the partition is caught up, or when its payloads reach ``max_batch_bytes``
  (the batch ends with the record that reaches it, and the next one starts after it: a
  function of the records' sizes alone). The client's own buffers are bounded by bytes as
  well (:func:`byte_bounds`: ``fetch.max.bytes``, ``max.partition.fetch.bytes``,
  ``queued.max.messages.kbytes``), so a partition of large records holds a few
  ``max_batch_bytes`` in memory, not ``batch_events`` times the largest record. Records read but not yet handed on (an
  open range) are not in the snapshot. So a batch's content depends on the topic,
  not on fetch timing, and a run resumed after a crash cuts exactly the batches of
  an uninterrupted one (the flow's event-time clock advances per batch: equal
  batches give equal scores). Records with a null value
  (tombstones) carry no event: they are skipped like blank lines of a file,
  logged and counted, and the position moves past them. Error events from the
  client (transport errors, which librdkafka retries by itself) are logged and
  skipped: they are not records and do not move the position. A fatal client
  error raises :class:`KafkaSourceError`.
* If a resume offset no longer exists (retention deleted it, the topic was
  recreated), the client restarts at the earliest retained offset
  (``auto.offset.reset=earliest``, not overridable) and the jump is logged as a
  warning; nothing silently skips to the end.
* Graceful stop (:func:`request_stop`, which ``lifecycle run`` calls on SIGTERM):
  every partition ends (``StopIteration``) at its next poll, its snapshot the
  offset after the last record handed on; held records are read again after a
  restart. The flow then drains like at the end of a finite input and commits a
  final epoch, so a restart with the recovery store repeats and loses nothing.
* ``eof_exit`` (``LIFECYCLE_KAFKA_EOF_EXIT``): a partition ends (``StopIteration``) at the first
  poll after it has handed on everything up to the end of the partition, so
  tests and backfills terminate when caught up. Otherwise partitions run until
  the process stops; a caught-up partition polls every 50 ms, and no poll blocks
  the Bytewax worker for more than 5 ms.
* Consumer lag (``lag_gauge``, ``lifecycle_kafka_consumer_lag``): after every
  poll, the partition's high watermark minus the next offset to read, never
  below 0. The high watermark is the one of the latest *fetch response*
  (``get_watermark_offsets(cached=True)``), not a ListOffsets request: tansu's
  ListOffsets end offset can be short by one produce batch (DESIGN.md section 4),
  its fetch responses are right. Records already fetched into the client's
  queue but not yet handed on count as lag.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, cast

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from pipelines.contract.events import RawBatch
from pipelines.contract.time import Clock
from pipelines.io.kafka.clientlog import KAFKA_CLIENT_LOG
from pipelines.io.kafka.errors import KafkaSourceError
from pipelines.io.kafka.stop import STOP_REQUESTED
from pipelines.io.kafka.url import StartPosition, _labels, parse_kafka_start, parse_kafka_url

if TYPE_CHECKING:
    from prometheus_client import Gauge


log = logging.getLogger(__name__)

#: How long one ``consume`` call may block the Bytewax worker when the local queue is short.
POLL_TIMEOUT_S = 0.005
#: After an empty poll at the end of the partition, wait this long before polling again (no busy spin).
IDLE_BACKOFF = timedelta(milliseconds=50)
#: After an empty poll before the end (a fetch is in flight), wait this long.
FETCH_BACKOFF = timedelta(milliseconds=5)

#: Client defaults; ``config`` passed to the source overrides any of them (security, tuning).
CONSUMER_DEFAULTS: dict[str, Any] = {
    # tansu and small topics: without it librdkafka waits between fetches (DESIGN.md section 4).
    "fetch.queue.backoff.ms": 5,
    # tansu holds a fetch for up to this long even when data is available; 100 ms is
    # ~3x the throughput of the 500 ms default there and harmless on Kafka.
    "fetch.wait.max.ms": 100,
}
#: Payload bytes after which a batch ends early (see the module docstring).
MAX_BATCH_BYTES = 32 << 20


def byte_bounds(max_batch_bytes: int, message_max_bytes: int = 1_000_000) -> dict[str, Any]:
    """The librdkafka options that bound what one partition's consumer buffers to about ``max_batch_bytes``.

    ``fetch.max.bytes`` (librdkafka default 50 MiB) caps one fetch response, ``max.partition.fetch.bytes``
    (1 MiB) what one fetch takes from the partition, ``queued.max.messages.kbytes`` (64 MiB) the records
    prefetched into the client's queue. A single record larger than these is still fetched (the
    broker returns it whole so that the consumer progresses): the broker's ``max.message.bytes``
    bounds records; the decoder rejects any above ``max_event_bytes`` as oversized. Options given in
    the source's ``config`` override these. librdkafka refuses a ``fetch.max.bytes`` below the client's
    ``message.max.bytes`` (``message_max_bytes``, default 1,000,000), so it is never set lower.
    """
    return {
        "fetch.max.bytes": max(message_max_bytes, max_batch_bytes),
        "max.partition.fetch.bytes": max(1024, min(1 << 20, max_batch_bytes)),
        "queued.max.messages.kbytes": max(1, max_batch_bytes // 1024),
    }


#: Set by the source and not overridable: they are what the semantics above rely on.
_CONSUMER_FIXED: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,
    "auto.offset.reset": "earliest",
}


class _KafkaPartition(StatefulSourcePartition[RawBatch, int]):
    """One Kafka partition. State = offset of the next record to read (may be a logical offset,
    ``OFFSET_BEGINNING``/``OFFSET_END``, until the first record or end-of-partition resolves it).
    """

    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        partition: int,
        start: int,
        *,
        batch_events: int,
        eof_exit: bool,
        clock: Clock,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        metadata_timeout_s: float = 10.0,
        start_timestamp_ms: int | None = None,
        lag: Gauge | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self._topic = topic
        self._partition = partition
        self._batch = batch_events
        self._max_bytes = max_batch_bytes
        self._eof_exit = eof_exit
        self._clock = clock
        self._at_end = False
        self._said_caught_up = False
        self._idle = False
        self._tombstones = 0
        self._lag = lag
        self._tp = TopicPartition(topic, partition)
        #: skip records older than this until the first that is not (time start; see the module docstring)
        self._seek_ms = start_timestamp_ms
        self._seek_skipped = 0
        self._consumer = Consumer(config)
        try:
            # Metadata first: assigned with an unknown leader, librdkafka retries a logical-offset
            # lookup only after 500 ms. All topics, so that this never auto-creates one.
            self._consumer.list_topics(timeout=metadata_timeout_s)
        except KafkaException as err:
            log.warning("kafka %s[%d]: no metadata yet (%s); the client keeps trying", topic, partition, err)
        if start_timestamp_ms is not None:
            start = self._offset_for_time(start_timestamp_ms, metadata_timeout_s)
        self._next = start  # next offset to read from the client
        #: records read but not yet handed on (the open aligned range; see ``_cut``)
        self._held_offsets: list[int] = []
        self._held_payloads: list[bytes] = []
        self._held_bytes = 0  # payload bytes held
        self._held_from = start  # the snapshot while records are held
        self._stop = stop if stop is not None else threading.Event()
        self._stopping = False
        self._checked_start = start < 0  # logical start: no gap check
        self._consumer.assign([TopicPartition(topic, partition, start)])
        log.info("kafka %s[%d]: assigned at %s", topic, partition, _labels(start))

    def _offset_for_time(self, ts_ms: int, timeout_s: float) -> int:
        when = StartPosition(OFFSET_END, ts_ms)
        try:
            (res,) = self._consumer.offsets_for_times([TopicPartition(self._topic, self._partition, ts_ms)], timeout_s)
        except KafkaException as err:
            raise KafkaSourceError(
                f"kafka {self._topic}[{self._partition}]: cannot look up the offset of start time {when}: {err}"
            ) from err
        if res.error is not None:
            raise KafkaSourceError(
                f"kafka {self._topic}[{self._partition}]: offset lookup for start time {when} failed: {res.error}"
            )
        if res.offset < 0:  # no record that new yet: read what comes from now on
            log.info("kafka %s[%d]: no record at or after %s yet; starting at the end", *self._pos(), when)
            return OFFSET_END
        log.info("kafka %s[%d]: start time %s is at offset %d", *self._pos(), when, res.offset)
        return int(res.offset)

    def _pos(self) -> tuple[str, int]:
        return self._topic, self._partition

    def next_batch(self) -> list[RawBatch]:
        if self._stop.is_set():
            self._end_on_stop()
        if self._at_end and self._eof_exit and not self._held_offsets:
            raise StopIteration()
        msgs = self._consumer.consume(num_messages=self._want(), timeout=POLL_TIMEOUT_S)
        self._idle = not msgs
        if self._seek_ms is not None and msgs:
            msgs = self._skip_before_start(msgs)
        if msgs:
            self._hold(msgs)
        batches = self._cut() if self._held_offsets else []
        if self._at_end and not self._held_offsets and not self._said_caught_up:
            # nothing more to read for now: tell the flow, so that this partition holds no event-time
            # tick back while it is idle (pipelines.core.shard); the next record lifts it again
            batches.append(dataclasses.replace(self._raw_batch([], []), caught_up=True))
            self._said_caught_up = True
        elif not self._at_end:
            self._said_caught_up = False
        if self._lag is not None:
            self._report_lag(self._lag)
        return batches

    def _want(self) -> int:
        """Records to ask the client for: up to the next multiple of ``batch_events`` (aligned batches)."""
        if self._held_offsets:
            return max(1, self._boundary(self._held_offsets[0]) - self._next)
        if self._next >= 0:
            return self._batch - self._next % self._batch
        return self._batch  # logical start: the first record fixes the alignment

    def _boundary(self, offset: int) -> int:
        return (offset // self._batch + 1) * self._batch

    def _hold(self, msgs: list[Message]) -> None:
        """Records of one poll (client events handled) onto the held run, in offset order."""
        before = self._next
        errors = [m.error() for m in msgs]
        # (never ``==`` on KafkaError: its comparison with None leaves a pending exception in the interpreter)
        if all(e is None for e in errors):  # the common case: records only, no per-record Python loop
            offsets = cast(list[int], [m.offset() for m in msgs])  # records always have an offset
            payloads: list[bytes | None] = [m.value() for m in msgs]
            self._check_start(offsets[0])
            self._next = offsets[-1] + 1
            self._at_end = False
        else:
            offsets, payloads = self._slow_path(msgs, errors)
        if None in payloads:
            offsets, payloads = self._drop_tombstones(offsets, payloads)
        if not payloads:
            return
        if not self._held_offsets:
            self._held_from = before  # nothing of this run handed on yet: a snapshot resumes here
        self._held_offsets += offsets
        self._held_payloads += cast(list[bytes], payloads)  # no None left
        self._held_bytes += sum(map(len, cast(list[bytes], payloads)))

    def _cut(self) -> list[RawBatch]:
        """Hand on the held records of every completed aligned range, and all of them at the end.

        A range ``[k * batch_events, (k + 1) * batch_events)`` is complete once the read position
        passed its end. So a batch's content depends on the topic alone, not on how the client's
        fetches happened to split it, and a run resumed at a snapshot (always a range end, or the
        partition end) cuts the same batches as an uninterrupted run: the flow's event-time clock
        advances per batch, so the scores of a replay equal the original's.
        """
        out: list[RawBatch] = []
        offs, pays = self._held_offsets, self._held_payloads
        while offs:
            end = self._boundary(offs[0])
            n = bisect.bisect_left(offs, end)
            full = self._bytes_cut(pays, n) if self._held_bytes >= self._max_bytes else None
            if full is not None:
                n = full  # the batch is full in bytes: it ends with the record that filled it
            elif n == len(offs) and self._next < end:
                if not self._at_end:
                    break  # range still open: hold until more records or the end of the partition
                n = len(offs)  # caught up: hand on the partial range (a live stream must not wait)
            out.append(self._raw_batch(offs[:n], pays[:n]))
            self._held_from = offs[n - 1] + 1
            offs, pays = offs[n:], pays[n:]
            self._held_bytes = sum(map(len, pays))
        self._held_offsets, self._held_payloads = offs, pays
        return out

    def _bytes_cut(self, pays: list[bytes], n: int) -> int | None:
        """How many of the first ``n`` held records fill a batch in bytes (None: they do not fill one)."""
        total = np.cumsum(np.fromiter(map(len, pays[:n]), np.int64, n))
        i = int(np.searchsorted(total, self._max_bytes))  # the first record at which the bytes reach the bound
        return i + 1 if i < n else None

    def _raw_batch(self, offsets: list[int], payloads: list[bytes]) -> RawBatch:
        return RawBatch(
            source=self._topic,
            partition=self._partition,
            offsets=np.asarray(offsets, dtype=np.int64),
            payloads=payloads,
            read_at_ms=int(self._clock() * 1000),
        )

    def _end_on_stop(self) -> NoReturn:
        """Graceful stop: end this partition now; held records were not handed on and are read again."""
        if not self._stopping:
            self._stopping = True
            log.info(
                "kafka %s[%d]: stop requested: partition ends at offset %s (%d read record(s) not handed on)",
                *self._pos(),
                _labels(self.snapshot()),
                len(self._held_offsets),
            )
        raise StopIteration()

    def _skip_before_start(self, msgs: list[Message]) -> list[Message]:
        """Time start: drop records older than the start time up to the first one that is not.

        Only until that first record: Kafka's time start is "the first record at or after T, and
        everything after it", whatever the timestamps of later records.
        """
        seek = self._seek_ms
        assert seek is not None
        for i, m in enumerate(msgs):
            if m.error() is not None:
                continue  # client events are handled with the records that follow
            kind, ts = m.timestamp()
            if kind == TIMESTAMP_NOT_AVAILABLE or ts >= seek:  # (no timestamp: cannot judge, keep it)
                self._seek_ms = None
                if self._seek_skipped:
                    log.info(
                        "kafka %s[%d]: skipped %d record(s) older than the start time; first record read: offset %s",
                        *self._pos(),
                        self._seek_skipped,
                        m.offset(),
                    )
                return [e for e in msgs[:i] if e.error() is not None] + msgs[i:]
            off = m.offset()
            assert off is not None
            self._checked_start = True
            self._next = off + 1
            self._at_end = False
            self._seek_skipped += 1
        # Every record of this poll was older (only client events may remain): handle the events.
        return [m for m in msgs if m.error() is not None]

    def _report_lag(self, gauge: Gauge) -> None:
        handed = self.snapshot()
        if handed < 0:
            return  # logical start not yet resolved: lag unknown
        marks = self._consumer.get_watermark_offsets(self._tp, cached=True)  # from fetch responses
        if marks is None or marks[1] < 0:
            return  # no fetch response yet
        gauge.set(max(0, marks[1] - handed))

    def _slow_path(self, msgs: list[Message], errors: list[KafkaError | None]) -> tuple[list[int], list[bytes | None]]:
        """Records and client events mixed: keep the records in order, handle each event."""
        offsets: list[int] = []
        payloads: list[bytes | None] = []
        for msg, err in zip(msgs, errors, strict=True):
            if err is not None:
                self._on_error(err, msg.offset())
                continue
            off = msg.offset()
            assert off is not None
            self._check_start(off)
            self._next = off + 1
            self._at_end = False  # records after an end-of-partition: not at the end any more
            offsets.append(off)
            payloads.append(msg.value())
        return offsets, payloads

    def _drop_tombstones(
        self, offsets: list[int], payloads: list[bytes | None]
    ) -> tuple[list[int], list[bytes | None]]:
        keep = [i for i, p in enumerate(payloads) if p is not None]
        dropped = [offsets[i] for i, p in enumerate(payloads) if p is None]
        self._tombstones += len(dropped)
        log.warning(
            "kafka %s[%d]: %d record(s) with a null value skipped (offsets %s)",
            self._topic,
            self._partition,
            len(dropped),
            dropped[:10],
        )
        return [offsets[i] for i in keep], [payloads[i] for i in keep]

    def _check_start(self, first: int) -> None:
        if self._checked_start:
            return
        self._checked_start = True
        if first != self._next:
            log.warning(
                "kafka %s[%d]: resumed at offset %d but the first record available is %d "
                "(the offset no longer exists: retention or topic recreated); reading from there",
                self._topic,
                self._partition,
                self._next,
                first,
            )

    def _on_error(self, err: KafkaError, offset: int | None) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            # Every record before ``offset`` has been delivered (they precede this event in the queue).
            self._at_end = True
            self._checked_start = True
            if offset is not None and offset >= 0 and offset > self._next:
                self._next = offset  # resolves a logical start; skips control records at the end
            return
        if err.fatal():
            raise KafkaSourceError(f"kafka {self._topic}[{self._partition}]: fatal client error: {err}")
        log.warning("kafka %s[%d]: %s (skipped; the client retries)", self._topic, self._partition, err)

    def next_awake(self) -> datetime | None:
        if not self._idle:
            return None  # records are flowing: poll again at once
        # Caught up: wait for new records. Otherwise a fetch is in flight (or the client reconnects).
        return datetime.now(UTC) + (IDLE_BACKOFF if self._at_end else FETCH_BACKOFF)

    def snapshot(self) -> int:
        # Records read but still held (an open aligned range) were not handed on: resume before them.
        return self._held_from if self._held_offsets else self._next

    def close(self) -> None:
        if self._tombstones:
            log.info("kafka %s[%d]: %d null-value records skipped", self._topic, self._partition, self._tombstones)
        self._consumer.close()


class KafkaBatchSource(FixedPartitionedSource[RawBatch, int]):
    """All partitions of one Kafka topic, one Bytewax source partition per Kafka partition.

    Parts are named ``"<topic>-<partition>"``. Resume state is the offset of the
    next record to read (the last record handed on + 1); see the module
    docstring for the exact delivery semantics.

    ``start`` (:func:`parse_kafka_start`) applies to partitions without resume state only.
    ``lag_gauge``: a Prometheus gauge with the label ``partition`` and optionally ``topic``
    (``lifecycle_kafka_consumer_lag``), set per partition after every poll.
    ``stop``: when set, every partition ends at its next poll (graceful stop); default
    :data:`STOP_REQUESTED`, which :func:`request_stop` sets.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        batch_events: int = 20_000,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        start: str = "earliest",
        eof_exit: bool = False,
        group_id: str = "lifecycle-scoring",
        config: Mapping[str, Any] | None = None,
        clock: Clock = time.time,
        metadata_timeout_s: float = 10.0,
        lag_gauge: Gauge | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        if batch_events < 1 or max_batch_bytes < 1:
            raise ValueError(f"batch_events and max_batch_bytes must be >= 1, got {batch_events}, {max_batch_bytes}")
        if lag_gauge is not None:
            names = set(getattr(lag_gauge, "_labelnames", ()))
            if "partition" not in names or not names <= {"topic", "partition"}:
                raise ValueError(
                    f"lag_gauge must have the labels ('partition',) or ('topic', 'partition'), got {sorted(names)}"
                )
        self.bootstrap = bootstrap
        self.topic = topic
        self._batch = batch_events
        self._max_bytes = max_batch_bytes
        self.start = parse_kafka_start(start)
        self._lag_gauge = lag_gauge
        self._eof_exit = eof_exit
        self._group_id = group_id
        self._config = dict(config or {})
        self._clock = clock
        self._metadata_timeout_s = metadata_timeout_s
        self._stop = stop if stop is not None else STOP_REQUESTED

    @classmethod
    def from_url(cls, url: str, **options: Any) -> KafkaBatchSource:
        """The source for ``kafka://HOST:PORT[,HOST:PORT]/TOPIC``; ``options`` are the constructor's keywords.

        Plain values only (as bytewax's ``KafkaSource``): the connector never reads the
        application's settings, the composition root (:mod:`pipelines.flow.runner`) does.
        """
        bootstrap, topic = parse_kafka_url(url)
        return cls(bootstrap, topic, **options)

    def _client_config(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, "logger": KAFKA_CLIENT_LOG, **self._config}

    def partitions(self) -> list[int]:
        """Partition numbers of the topic, from broker metadata. Never creates the topic."""
        admin = AdminClient(self._client_config())
        try:
            # All topics, not list_topics(topic): asking for one topic auto-creates it on brokers that allow it.
            md = admin.list_topics(timeout=self._metadata_timeout_s)
        except KafkaException as err:
            raise KafkaSourceError(
                f"cannot reach Kafka broker(s) {self.bootstrap} to list the partitions of topic {self.topic!r}: "
                f"{err.args[0] if err.args else err}"
            ) from err
        meta = md.topics.get(self.topic)
        if meta is None:
            raise KafkaSourceError(f"Kafka topic {self.topic!r} does not exist on broker(s) {self.bootstrap}")
        if meta.error is not None:
            raise KafkaSourceError(f"Kafka topic {self.topic!r} on broker(s) {self.bootstrap}: {meta.error.str()}")
        if not meta.partitions:
            raise KafkaSourceError(f"Kafka topic {self.topic!r} on broker(s) {self.bootstrap} has no partitions")
        return sorted(meta.partitions)

    def list_parts(self) -> list[str]:
        return [f"{self.topic}-{p}" for p in self.partitions()]

    def streams(self) -> list[str]:
        """The event-time streams this source feeds: one per partition (``topic:partition``)."""
        return [f"{self.topic}:{p}" for p in self.partitions()]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaPartition:
        topic, _, num = for_part.rpartition("-")
        if topic != self.topic or not num.isdigit():
            raise KafkaSourceError(f"partition {for_part!r} does not belong to topic {self.topic!r}")
        partition = int(num)
        config = {
            **CONSUMER_DEFAULTS,
            **byte_bounds(self._max_bytes, int(self._config.get("message.max.bytes", 1_000_000))),
            "group.id": self._group_id,
            "client.id": f"{self._group_id}-{for_part}",
            **self._client_config(),
            **_CONSUMER_FIXED,
        }
        lag = None
        if self._lag_gauge is not None:
            labels = {"topic": self.topic, "partition": str(partition)}
            lag = self._lag_gauge.labels(**{k: labels[k] for k in self._lag_gauge._labelnames})
        fresh = resume_state is None
        return _KafkaPartition(
            config,
            self.topic,
            partition,
            self.start.offset if resume_state is None else resume_state,
            batch_events=self._batch,
            eof_exit=self._eof_exit,
            clock=self._clock,
            max_batch_bytes=self._max_bytes,
            metadata_timeout_s=self._metadata_timeout_s,
            start_timestamp_ms=self.start.timestamp_ms if fresh else None,  # a resume state wins over the start
            lag=lag,
            stop=self._stop,
        )


# --------------------------------------------------------------------------- producing
