"""devtools.kafka_demo: simulated streams to Kafka, topic creation, the local broker, the Kafka demo."""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path

import pytest

from devtools.broker import start_local_broker
from pipelines.io.kafka.admin import count_records, ensure_topic
from pipelines.offline.simulate_io import simulate_to_kafka

pytestmark = pytest.mark.integration


def test_simulate_to_kafka_round_trip_keeps_every_event_keyed_by_user_in_time_order(kafka_broker, read_topic) -> None:
    from pipelines.offline.simulate import SimConfig, simulate
    from pipelines.offline.simulate_io import iter_ndjson_batches

    topic = "sim-roundtrip"
    url = f"kafka://{kafka_broker.bootstrap}/{topic}"
    n = simulate_to_kafka(url, users=400, days=7, seed=21, partitions=3)  # the topic does not exist yet: created

    expected = [
        line for b in iter_ndjson_batches(simulate(SimConfig(users=400, days=7, seed=21)).events, 10**6) for line in b
    ]
    assert n == len(expected)
    msgs = read_topic(kafka_broker.bootstrap, topic)
    assert {m.partition() for m in msgs} == {0, 1, 2}
    assert Counter(m.value() for m in msgs) == Counter(expected)  # every event once, bytes as the file writer's

    partitions_of: dict[str, set[int]] = {}
    last_ts: dict[str, int] = {}
    for m in msgs:  # partition by partition, offset order
        event = json.loads(m.value())
        assert m.key() == event["user_id"].encode()
        partitions_of.setdefault(event["user_id"], set()).add(m.partition())
        assert event["ts"] >= last_ts.get(event["user_id"], 0), "a user's events are out of time order"
        last_ts[event["user_id"]] = event["ts"]
    assert all(len(p) == 1 for p in partitions_of.values())
    assert count_records(kafka_broker.bootstrap, topic) == n


def test_ensure_topic_creates_a_missing_topic_once_and_keeps_an_existing_one(kafka_broker) -> None:
    assert ensure_topic(kafka_broker.bootstrap, "ensure-me", 2) is True
    assert ensure_topic(kafka_broker.bootstrap, "ensure-me", 5) is False  # kept with its 2 partitions
    from pipelines.io.kafka.source import KafkaBatchSource

    assert KafkaBatchSource(kafka_broker.bootstrap, "ensure-me").partitions() == [0, 1]
    with pytest.raises(ValueError):
        simulate_to_kafka("kafka://nohost/topic", users=1, days=1, seed=1)  # bad URL: before simulating


def test_simulate_to_kafka_writes_the_ground_truth_when_asked(kafka_broker, tmp_path: Path) -> None:
    url = f"kafka://{kafka_broker.bootstrap}/sim-truth"
    n = simulate_to_kafka(url, users=50, days=3, seed=2, truth_path=tmp_path / "truth.csv")
    from pipelines.offline.simulate import SimConfig, simulate

    sim = simulate(SimConfig(users=50, days=3, seed=2))
    assert n == sim.events.height
    assert (tmp_path / "truth.csv").read_text().count("\n") == sim.truth.height + 1  # header + one row per user


def test_local_broker_stops_and_leaves_no_listener() -> None:
    bootstrap, stop = start_local_broker()
    host, port = bootstrap.rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=2).close()  # listening
    stop()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()
    stop()  # idempotent


def test_kafka_demo_runs_end_to_end_through_a_local_broker(tmp_path: Path, monkeypatch, capsys) -> None:
    from devtools.kafka_demo import run_kafka_demo
    from pipelines.io.store.chdb import ChdbStore

    monkeypatch.setenv("LIFECYCLE_METRICS_PORT", "0")
    store = tmp_path / "demo.chdb"
    assert run_kafka_demo(users=200, days=5, store=f"chdb://{store}", partitions=2) == 0
    out = capsys.readouterr().out
    assert "produced" in out and "local broker stopped" in out
    s = ChdbStore(store)
    try:
        users = s.query("SELECT count() AS n FROM user_scores FINAL").column("n")[0].as_py()
    finally:
        s.close()
    assert 0 < users <= 200
