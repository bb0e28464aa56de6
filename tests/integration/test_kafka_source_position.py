"""KafkaBatchSource: start by time and consumer lag, against the real tansu broker."""

from __future__ import annotations

import time
from contextlib import closing
from datetime import UTC, datetime

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Producer
from prometheus_client import CollectorRegistry, Gauge

from pipelines.contract.events import RawBatch
from pipelines.io.kafka.producer import produce_lines
from pipelines.io.kafka.source import KafkaBatchSource
from pipelines.io.kafka.url import StartPosition, parse_kafka_start

pytestmark = pytest.mark.integration

STEP = "events"


def _records(batches: list[RawBatch]) -> list[tuple[int, bytes]]:
    return [(int(o), p) for b in batches for o, p in zip(b.offsets, b.payloads, strict=True)]


def _drain(part, *, timeout_s: float = 15.0, on_poll=None) -> list[RawBatch]:
    out: list[RawBatch] = []
    deadline = time.monotonic() + timeout_s
    while True:
        assert time.monotonic() < deadline, "partition did not reach its end in time"
        try:
            out.extend(part.next_batch())
        except StopIteration:
            return out
        if on_poll is not None:
            on_poll()
        awake = part.next_awake()
        if awake is not None:
            time.sleep(max(0.0, awake.timestamp() - time.time()))


def _produce_at(bootstrap: str, topic: str, stamped: list[tuple[bytes, int]]) -> None:
    """Records with explicit Kafka timestamps (ms), each in its own produce batch."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for value, ts in stamped:
        producer.produce(topic, value=value, timestamp=ts)
        assert producer.flush(10) == 0


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def test_kafka_start_accepts_earliest_latest_iso_time_with_offset_and_epoch_ms() -> None:
    assert parse_kafka_start("earliest") == StartPosition(OFFSET_BEGINNING)
    assert parse_kafka_start(" LATEST ") == StartPosition(OFFSET_END)
    ms = 1_790_784_000_000  # 2026-10-01T00:00:00+08:00
    for text in ("2026-10-01T00:00:00+08:00", "2026-09-30T16:00:00Z", "2026-09-30T16:00:00.000+00:00", str(ms)):
        assert parse_kafka_start(text) == StartPosition(OFFSET_END, ms), text
    assert str(parse_kafka_start(str(ms))) == "2026-09-30T16:00:00.000+00:00"
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_kafka_start("2026-10-01T00:00:00")
    with pytest.raises(ValueError, match="milliseconds"):
        parse_kafka_start("1790784000")  # seconds
    with pytest.raises(ValueError, match="earliest"):
        parse_kafka_start("yesterday")
    with pytest.raises(ValueError):
        KafkaBatchSource("127.0.0.1:1", "t", start="soon")


def test_start_time_reads_from_the_first_record_at_or_after_it_and_everything_after(kafka_broker) -> None:
    topic = kafka_broker.create_topic(partitions=1)
    base = int(time.time() * 1000) - 3_600_000
    # offset: 0     1      2      3      4 (older again)  5
    stamps = [base, base + 1000, base + 2000, base + 3000, base + 1500, base + 4000]
    _produce_at(kafka_broker.bootstrap, topic, [(b"r%d" % i, ts) for i, ts in enumerate(stamps)])

    source = KafkaBatchSource(kafka_broker.bootstrap, topic, start=_iso(base + 2000), eof_exit=True)
    with closing(source.build_part(STEP, source.list_parts()[0], None)) as part:
        got = _records(_drain(part))
        assert part.snapshot() == 6
    # Kafka semantics: the first record at or after the time, then every later record whatever its time.
    assert got == [(2, b"r2"), (3, b"r3"), (4, b"r4"), (5, b"r5")]

    between = KafkaBatchSource(kafka_broker.bootstrap, topic, start=str(base + 2500), eof_exit=True)
    with closing(between.build_part(STEP, between.list_parts()[0], None)) as part:
        assert [o for o, _ in _records(_drain(part))] == [3, 4, 5]


def test_start_time_after_every_record_reads_only_records_produced_later(kafka_broker) -> None:
    topic = kafka_broker.create_topic(partitions=1)
    now = int(time.time() * 1000)
    _produce_at(kafka_broker.bootstrap, topic, [(b"old%d" % i, now - 10_000 + i) for i in range(5)])
    source = KafkaBatchSource(kafka_broker.bootstrap, topic, start=str(now), eof_exit=True)
    (name,) = source.list_parts()
    with closing(source.build_part(STEP, name, None)) as part:
        assert _records(_drain(part)) == []
        state = part.snapshot()
    assert state == 5, "the position did not move past the records before the start time"

    _produce_at(kafka_broker.bootstrap, topic, [(b"new", now + 5)])
    with closing(source.build_part(STEP, name, state)) as part:
        assert _records(_drain(part)) == [(5, b"new")]


def test_resume_state_wins_over_the_start_time(kafka_broker) -> None:
    topic = kafka_broker.create_topic(partitions=1)
    now = int(time.time() * 1000)
    _produce_at(kafka_broker.bootstrap, topic, [(b"r%d" % i, now - 1000 + i) for i in range(4)])
    source = KafkaBatchSource(kafka_broker.bootstrap, topic, start=str(now + 60_000), eof_exit=True)
    with closing(source.build_part(STEP, source.list_parts()[0], 1)) as part:
        assert _records(_drain(part)) == [(1, b"r1"), (2, b"r2"), (3, b"r3")]


def _poll_until(part, cond, timeout_s: float = 15.0) -> list[RawBatch]:
    out: list[RawBatch] = []
    deadline = time.monotonic() + timeout_s
    while not cond(out):
        assert time.monotonic() < deadline, "condition not reached in time"
        out += part.next_batch()
    return out


def _records_read(out: list[RawBatch]) -> bool:
    """Some batch carried records (a caught-up marker, an empty batch, does not count)."""
    return any(b.payloads for b in out)


def test_lag_gauge_is_unread_records_and_returns_to_zero_when_caught_up(kafka_broker) -> None:
    topic = kafka_broker.create_topic(partitions=1)
    produce_lines(kafka_broker.bootstrap, topic, [b"x%d" % i for i in range(5000)])
    registry = CollectorRegistry()
    gauge = Gauge("lifecycle_kafka_consumer_lag", "lag", ["topic", "partition"], registry=registry)
    source = KafkaBatchSource(kafka_broker.bootstrap, topic, batch_events=100, lag_gauge=gauge)  # runs until stopped

    def lag() -> float | None:
        return registry.get_sample_value("lifecycle_kafka_consumer_lag", {"topic": topic, "partition": "0"})

    with closing(source.build_part(STEP, source.list_parts()[0], None)) as part:
        _poll_until(part, _records_read)
        # The high watermark of the fetch response (5000), minus the next offset to hand on.
        assert part.snapshot() == 100 and lag() == 4900
        seen = [4900.0]

        def caught_up(_: list[RawBatch]) -> bool:
            seen.append(lag())  # type: ignore[arg-type]
            return part.snapshot() == 5000 and seen[-1] == 0

        _poll_until(part, caught_up)
        assert seen == sorted(seen, reverse=True) and min(seen) == 0, "lag must fall to 0, never below"
        for _ in range(5):  # caught up, idle polls: stays 0 (at most the one caught-up marker, no records)
            assert not _records_read(part.next_batch())
            assert lag() == 0

        produce_lines(kafka_broker.bootstrap, topic, [b"y%d" % i for i in range(300)])
        _poll_until(part, _records_read)
        assert lag() == 5300 - part.snapshot() and part.snapshot() > 5000
        _poll_until(part, lambda _: part.snapshot() == 5300 and lag() == 0)


def test_lag_is_reported_per_partition(kafka_broker) -> None:
    topic = kafka_broker.create_topic(partitions=2)
    produce_lines(kafka_broker.bootstrap, topic, [b"x%d" % i for i in range(2000)], key_fn=lambda line: line)
    registry = CollectorRegistry()
    gauge = Gauge("lifecycle_kafka_consumer_lag", "lag", ["topic", "partition"], registry=registry)
    source = KafkaBatchSource(kafka_broker.bootstrap, topic, batch_events=100, eof_exit=True, lag_gauge=gauge)
    p0, p1 = source.list_parts()

    def lag(p: int) -> float | None:
        return registry.get_sample_value("lifecycle_kafka_consumer_lag", {"topic": topic, "partition": str(p)})

    with closing(source.build_part(STEP, p0, None)) as part0, closing(source.build_part(STEP, p1, None)) as part1:
        _drain(part0)
        _poll_until(part1, bool)
        assert lag(0) == 0
        assert lag(1) is not None and lag(1) > 0


def test_lag_gauge_with_only_a_partition_label_is_accepted_and_bad_labels_are_refused(kafka_broker) -> None:
    topic = kafka_broker.create_topic(partitions=1)
    produce_lines(kafka_broker.bootstrap, topic, [b"x"] * 10)
    registry = CollectorRegistry()
    gauge = Gauge("lag", "lag", ["partition"], registry=registry)
    source = KafkaBatchSource(kafka_broker.bootstrap, topic, eof_exit=True, lag_gauge=gauge)
    with closing(source.build_part(STEP, source.list_parts()[0], None)) as part:
        assert len(_records(_drain(part))) == 10
    assert registry.get_sample_value("lag", {"partition": "0"}) == 0
    with pytest.raises(ValueError, match="labels"):
        KafkaBatchSource("127.0.0.1:1", "t", lag_gauge=Gauge("bad", "b", ["user"], registry=CollectorRegistry()))
