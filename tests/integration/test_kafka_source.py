"""KafkaBatchSource against a real Kafka-protocol broker (tansu, started by the suite)."""

from __future__ import annotations

import json
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, Producer
from prometheus_client import CollectorRegistry

from pipelines.contract.events import RawBatch
from pipelines.io.kafka.errors import KafkaSourceError
from pipelines.io.kafka.producer import key_by_user_id, produce_lines
from pipelines.io.kafka.source import KafkaBatchSource
from pipelines.io.kafka.url import parse_kafka_url

pytestmark = pytest.mark.integration

STEP = "events"


def _lines(n: int, tag: str = "m") -> list[bytes]:
    return [json.dumps({"tag": tag, "i": i}).encode() for i in range(n)]


def _index_key(line: bytes) -> bytes:
    return str(json.loads(line)["i"]).encode()


def _drain(part, *, timeout_s: float = 15.0) -> list[RawBatch]:
    """next_batch until StopIteration (eof_exit sources), honouring next_awake like Bytewax would.

    The caught-up marker (an empty batch that tells the flow the partition holds no tick back) is
    checked and left out: every returned batch carries records.
    """
    out: list[RawBatch] = []
    deadline = time.monotonic() + timeout_s
    while True:
        assert time.monotonic() < deadline, "partition did not reach its end in time"
        try:
            got = part.next_batch()
        except StopIteration:
            return out
        for b in got:
            assert b.caught_up == (len(b.payloads) == 0), b
        out.extend(b for b in got if not b.caught_up)
        awake = part.next_awake()
        if awake is not None:
            time.sleep(max(0.0, awake.timestamp() - time.time()))


def _records(batches: list[RawBatch]) -> list[tuple[int, bytes]]:
    return [(int(o), p) for b in batches for o, p in zip(b.offsets, b.payloads, strict=True)]


def _read_all(source: KafkaBatchSource) -> dict[int, list[RawBatch]]:
    out = {}
    for name in source.list_parts():
        with closing(source.build_part(STEP, name, None)) as part:
            out[int(name.rpartition("-")[2])] = _drain(part)
    return out


def test_source_reads_every_produced_message_once_in_offset_order(kafka_broker) -> None:
    topic = kafka_broker.create_topic(partitions=3)
    lines = _lines(3000)
    assert produce_lines(kafka_broker.bootstrap, topic, lines, key_fn=_index_key) == len(lines)

    source = KafkaBatchSource(kafka_broker.bootstrap, topic, batch_events=400, eof_exit=True)
    assert source.list_parts() == [f"{topic}-0", f"{topic}-1", f"{topic}-2"]
    by_part = _read_all(source)

    seen: list[bytes] = []
    for p, batches in by_part.items():
        assert batches, f"partition {p} got nothing: keys did not spread"
        for b in batches:
            assert (b.source, b.partition) == (topic, p)
            assert 0 < len(b.payloads) <= 400
            assert b.offsets.dtype.name == "int64" and b.read_at_ms > 0
        recs = _records(batches)
        assert [o for o, _ in recs] == list(range(len(recs))), "offsets not contiguous and ascending"
        idx = [json.loads(v)["i"] for _, v in recs]
        assert idx == sorted(idx), "a partition's records are not in production order"
        seen += [v for _, v in recs]
    assert Counter(seen) == Counter(lines)


def test_resume_starts_after_the_snapshotted_offset(kafka_broker) -> None:
    topic = kafka_broker.create_topic(partitions=1)
    first = _lines(2000, "a")
    produce_lines(kafka_broker.bootstrap, topic, first)
    source = KafkaBatchSource(kafka_broker.bootstrap, topic, batch_events=300, eof_exit=True)
    (name,) = source.list_parts()

    before: list[tuple[int, bytes]] = []
    with closing(source.build_part(STEP, name, None)) as part:
        deadline = time.monotonic() + 10
        while len(before) < 700:
            assert time.monotonic() < deadline
            before += _records(part.next_batch())
        state = part.snapshot()
    assert state == before[-1][0] + 1

    later = _lines(500, "b")  # produced while "down": must be read after the resume
    produce_lines(kafka_broker.bootstrap, topic, later)

    with closing(source.build_part(STEP, name, state)) as resumed:
        after = _records(_drain(resumed))
        end_state = resumed.snapshot()

    assert after[0][0] == state, "re-read or skipped records at the resume point"
    assert [o for o, _ in before + after] == list(range(len(first) + len(later)))
    assert [v for _, v in before + after] == first + later
    assert end_state == len(first) + len(later)


def test_resume_at_the_end_reads_only_new_records(kafka_broker) -> None:
    topic = kafka_broker.create_topic(partitions=1)
    produce_lines(kafka_broker.bootstrap, topic, _lines(100))
    source = KafkaBatchSource(kafka_broker.bootstrap, topic, eof_exit=True)
    (name,) = source.list_parts()
    with closing(source.build_part(STEP, name, None)) as part:
        assert len(_records(_drain(part))) == 100
        state = part.snapshot()
    assert state == 100

    with closing(source.build_part(STEP, name, state)) as part:
        assert _drain(part) == [] and part.snapshot() == 100  # caught up: ends without re-reading


def test_caught_up_partition_without_eof_exit_waits_and_then_reads_new_records(kafka_broker) -> None:
    topic = kafka_broker.create_topic(partitions=1)
    produce_lines(kafka_broker.bootstrap, topic, _lines(10, "a"))
    source = KafkaBatchSource(kafka_broker.bootstrap, topic, eof_exit=False)
    (name,) = source.list_parts()
    with closing(source.build_part(STEP, name, None)) as part:
        got: list[tuple[int, bytes]] = []
        polls_idle = 0
        deadline = time.monotonic() + 10
        while polls_idle < 5:  # past the end: empty polls, a back-off, no StopIteration
            assert time.monotonic() < deadline
            batch = part.next_batch()
            got += _records(batch)
            if not batch and len(got) == 10:
                polls_idle += 1
                awake = part.next_awake()
                assert awake is not None and awake.timestamp() > time.time()
        produce_lines(kafka_broker.bootstrap, topic, _lines(5, "b"))
        while len(got) < 15:
            assert time.monotonic() < deadline
            got += _records(part.next_batch())
        assert [o for o, _ in got] == list(range(15))


def test_missing_topic_is_a_clear_error_and_is_not_created(kafka_broker) -> None:
    source = KafkaBatchSource(kafka_broker.bootstrap, "no-such-topic", eof_exit=True)
    with pytest.raises(KafkaSourceError, match=r"'no-such-topic' does not exist on broker\(s\) 127\.0\.0\.1:"):
        source.list_parts()
    with pytest.raises(KafkaSourceError, match="does not exist"):
        source.list_parts()  # still missing: listing did not auto-create it


def test_unreachable_broker_is_a_clear_error() -> None:
    source = KafkaBatchSource("127.0.0.1:1", "events", metadata_timeout_s=1.0)
    with pytest.raises(KafkaSourceError, match=r"cannot reach Kafka broker\(s\) 127\.0\.0\.1:1 .*'events'"):
        source.list_parts()


def test_kafka_url_names_brokers_and_topic() -> None:
    assert parse_kafka_url("kafka://a:9092,b:9093/events") == ("a:9092,b:9093", "events")
    for bad in ("kafka://a:9092", "kafka:///events", "kafka://a/events", "http://a:1/events", "kafka://a:1/x/y"):
        with pytest.raises(ValueError):
            parse_kafka_url(bad)


def _sim_lines(seed: int) -> tuple[list[bytes], int, int]:
    """Simulated NDJSON lines (300 users, 10 days), the number of distinct users, and a mid-window ts."""
    from pipelines.offline.simulate import SimConfig, simulate
    from pipelines.offline.simulate_io import iter_ndjson_batches

    sim = simulate(SimConfig(users=300, days=10, seed=seed))
    lines = [line for batch in iter_ndjson_batches(sim.events, 10_000) for line in batch]
    return lines, sim.events["user_id"].n_unique(), int(sim.events["ts"][len(lines) // 2])


def _run(bootstrap: str, topic: str, tmp_path: Path, **overrides):
    from pipelines.flow.runner import run_pipeline
    from pipelines.settings import Settings

    settings = Settings(
        input=f"kafka://{bootstrap}/{topic}",
        store=f"chdb://{tmp_path}/s.chdb",
        kafka_eof_exit=True,
        metrics_port=0,
        shards=2,
        **overrides,
    )
    return run_pipeline(settings, registry=CollectorRegistry(), serve_metrics=False)


def test_pipeline_consumes_topic_into_store(kafka_broker, tmp_path: Path) -> None:
    from pipelines.io.store.chdb import ChdbStore

    good, n_users, ts = _sim_lines(seed=5)
    bad = {  # payload -> the reason it must be rejected with
        b'{"event_id":"x1","user_id":"bad-1","ts":' + str(ts).encode() + b',"type":"order"': "malformed_json",
        json.dumps(
            {"event_id": "x2", "user_id": "bad-2", "ts": ts, "type": "teleport", "channel": "wecom", "amount": None}
        ).encode(): "unknown_event_type",
        json.dumps(
            {"event_id": "x3", "user_id": "bad-3", "ts": ts, "type": "order", "channel": "app", "amount": -5.0}
        ).encode(): "negative_amount",
    }
    lines = good[: len(good) // 2] + list(bad) + good[len(good) // 2 :]
    topic = kafka_broker.create_topic(partitions=2)
    assert produce_lines(kafka_broker.bootstrap, topic, lines, key_fn=key_by_user_id) == len(lines)

    result = _run(kafka_broker.bootstrap, topic, tmp_path)  # default allowed lateness (6 h)

    # Where each record really is, read back through the source itself.
    positions = {
        payload: (p, off)
        for p, batches in _read_all(KafkaBatchSource(kafka_broker.bootstrap, topic, eof_exit=True)).items()
        for off, payload in _records(batches)
    }
    store = ChdbStore(tmp_path / "s.chdb")
    try:
        users = store.query("SELECT count() AS n FROM user_scores FINAL").column("n")[0].as_py()
        rejected = store.query(
            "SELECT reason, source, partition, offset, payload FROM rejected_events FINAL ORDER BY reason"
        ).to_pylist()
    finally:
        store.close()
    assert users == n_users
    assert len(rejected) == 3
    for row in rejected:
        payload = row["payload"].encode() if isinstance(row["payload"], str) else row["payload"]
        assert row["reason"] == bad[payload]
        assert (row["source"], row["partition"], row["offset"]) == (topic, *positions[payload])

    assert result.events_in == len(lines)
    assert result.events_applied + len(rejected) == result.events_in
    assert result.rejected == {"malformed_json": 1, "unknown_event_type": 1, "negative_amount": 1}
    assert result.events_applied + sum(result.rejected.values()) == result.events_in


def test_backfill_of_a_multi_partition_topic_rejects_nothing_as_late(kafka_broker, tmp_path: Path) -> None:
    lines, _, _ = _sim_lines(seed=6)
    topic = kafka_broker.create_topic(partitions=2)
    produce_lines(kafka_broker.bootstrap, topic, lines, key_fn=key_by_user_id)
    result = _run(kafka_broker.bootstrap, topic, tmp_path)  # default allowed lateness (6 h)
    assert result.events_in == len(lines)
    assert result.rejected.get("late", 0) == 0
    assert result.events_applied == len(lines)


def test_latest_start_resolves_to_the_end_offset_and_resumes_there(kafka_broker) -> None:
    topic = kafka_broker.create_topic(partitions=1)
    old = _lines(100, "old")
    produce_lines(kafka_broker.bootstrap, topic, old)
    source = KafkaBatchSource(kafka_broker.bootstrap, topic, start="latest", eof_exit=True)
    (name,) = source.list_parts()
    with closing(source.build_part(STEP, name, None)) as part:
        # Kafka starts exactly at the end. tansu's ListOffsets end offset can be short by one produce
        # batch (DESIGN.md section 4), so here the tail of the old records may come first.
        tail = _records(_drain(part))
        state = part.snapshot()
    assert tail == list(zip(range(100 - len(tail), 100), old[100 - len(tail) :], strict=True))
    assert state == 100, "the logical 'latest' start was not resolved to a concrete offset"

    new = _lines(5, "new")
    produce_lines(kafka_broker.bootstrap, topic, new)
    with closing(source.build_part(STEP, name, state)) as part:
        assert _records(_drain(part)) == list(zip(range(100, 105), new, strict=True))


def test_null_value_records_are_skipped_without_stalling_the_position(kafka_broker) -> None:
    topic = kafka_broker.create_topic(partitions=1)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    for i in range(6):
        producer.produce(topic, value=None if i in (1, 5) else b"v%d" % i, key=b"k")
    assert producer.flush(10) == 0
    source = KafkaBatchSource(kafka_broker.bootstrap, topic, eof_exit=True)
    with closing(source.build_part(STEP, source.list_parts()[0], None)) as part:
        assert _records(_drain(part)) == [(0, b"v0"), (2, b"v2"), (3, b"v3"), (4, b"v4")]
        assert part.snapshot() == 6  # past the trailing tombstone: not re-read on resume


class _FakeMsg:
    def __init__(self, offset: int, value: bytes | None = None, err: KafkaError | None = None) -> None:
        self._offset, self._value, self._err = offset, value, err

    def error(self) -> KafkaError | None:
        return self._err

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value


class _FakeConsumer:
    def __init__(self, polls: list[list[_FakeMsg]]) -> None:
        self.polls = polls

    def consume(self, num_messages: int, timeout: float) -> list[_FakeMsg]:
        return self.polls.pop(0) if self.polls else []

    def close(self) -> None:
        pass


def test_records_around_client_events_are_all_handed_on_in_order(kafka_broker) -> None:
    """End-of-partition and transport errors arrive in the same poll as records: no record is
    dropped, the position follows the records, and the partition ends only at a trailing EOF."""
    topic = kafka_broker.create_topic(partitions=1)
    source = KafkaBatchSource(kafka_broker.bootstrap, topic, eof_exit=True)
    eof = KafkaError(KafkaError._PARTITION_EOF)
    transport = KafkaError(KafkaError._TRANSPORT)
    with closing(source.build_part(STEP, source.list_parts()[0], None)) as part:
        part._consumer.close()
        part._consumer = _FakeConsumer(  # type: ignore[assignment]
            [
                [_FakeMsg(0, b"a"), _FakeMsg(1, b"error text", transport), _FakeMsg(1, b"b")],
                [_FakeMsg(2, b"eof text", eof), _FakeMsg(2, b"c"), _FakeMsg(3, b"d")],
                [_FakeMsg(4, b"e"), _FakeMsg(5, b"eof text", eof)],
            ]
        )
        got = []
        for _ in range(3):
            got += _records(part.next_batch())
            if not got:  # an open aligned range, not caught up: held, nothing handed on yet
                assert part.snapshot() == OFFSET_BEGINNING
            elif len(got) < 5:
                assert part.snapshot() == got[-1][0] + 1
        assert got == [(0, b"a"), (1, b"b"), (2, b"c"), (3, b"d"), (4, b"e")]
        assert part.snapshot() == 5
        with pytest.raises(StopIteration):
            part.next_batch()


def test_producing_to_an_unreachable_broker_is_a_clear_error() -> None:
    with pytest.raises(KafkaSourceError, match=r"cannot reach Kafka broker\(s\) 127\.0\.0\.1:1 to produce to 'events'"):
        produce_lines("127.0.0.1:1", "events", [b"x"], metadata_timeout_s=1.0)


def test_pipeline_restarted_from_recovery_reads_only_new_records(kafka_broker, tmp_path: Path) -> None:
    lines, n_users, _ = _sim_lines(seed=7)
    half = len(lines) // 2
    topic = kafka_broker.create_topic(partitions=1)
    produce_lines(kafka_broker.bootstrap, topic, lines[:half], key_fn=key_by_user_id)
    first = _run(kafka_broker.bootstrap, topic, tmp_path, recovery_dir=tmp_path / "recovery")
    assert first.events_in == half

    produce_lines(kafka_broker.bootstrap, topic, lines[half:], key_fn=key_by_user_id)
    second = _run(kafka_broker.bootstrap, topic, tmp_path, recovery_dir=tmp_path / "recovery")
    assert second.events_in == len(lines) - half  # resumed after the snapshotted offset: nothing re-read
    assert first.events_applied + second.events_applied == len(lines)
    from pipelines.io.store.chdb import ChdbStore

    store = ChdbStore(tmp_path / "s.chdb")
    try:
        assert store.query("SELECT count() AS n FROM user_scores FINAL").column("n")[0].as_py() == n_users
    finally:
        store.close()


def test_batches_of_large_records_are_bounded_in_bytes_and_cut_the_same_after_a_resume(kafka_broker) -> None:
    # 300 records of 8 KiB: with only the count bound (batch_events=1000) one batch would hold all 2.4 MB
    topic = kafka_broker.create_topic(partitions=1)
    lines = [json.dumps({"i": i, "pad": "x" * 8192}).encode() for i in range(300)]
    produce_lines(kafka_broker.bootstrap, topic, lines)
    limit = 64 << 10
    source = KafkaBatchSource(kafka_broker.bootstrap, topic, batch_events=1000, max_batch_bytes=limit, eof_exit=True)
    (name,) = source.list_parts()
    with closing(source.build_part(STEP, name, None)) as part:
        whole = _drain(part)
    assert [v for _, v in _records(whole)] == lines
    sizes = [sum(map(len, b.payloads)) for b in whole]
    assert max(sizes) < limit + 8300  # the bound, plus the record that reached it
    assert len(whole) >= len(lines) * 8200 // (limit + 8300)
    # a resume at any batch end cuts the rest exactly as the uninterrupted run did
    cut = whole[len(whole) // 2]
    with closing(source.build_part(STEP, name, int(cut.offsets[-1]) + 1)) as resumed:
        rest = _drain(resumed)
    later = whole[len(whole) // 2 + 1 :]
    assert [list(b.offsets) for b in rest] == [list(b.offsets) for b in later]


def test_the_consumer_byte_bounds_are_valid_librdkafka_options_for_any_batch_size() -> None:
    from confluent_kafka import Consumer

    from pipelines.io.kafka.source import byte_bounds

    for size in (1024, 32 << 20, 512 << 20):
        opts = byte_bounds(size)
        assert opts["fetch.max.bytes"] == max(size, 1_000_000) >= opts["max.partition.fetch.bytes"]
        assert opts["queued.max.messages.kbytes"] * 1024 <= size
        Consumer({"bootstrap.servers": "127.0.0.1:9", "group.id": "bounds", **opts}).close()  # accepted
