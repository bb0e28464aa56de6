"""End to end through the real broker with the flow's Kafka outputs: every produced event is applied or
dead-lettered on the topic, the store has one latest score per user, and the transitions reach their topic.

Never skipped: a renamed or removed ``dead_letter_topic`` / ``transitions_topic`` setting fails here.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipelines.io.kafka.producer import key_by_user_id, produce_lines
from pipelines.settings import Settings

pytestmark = pytest.mark.integration


def test_settings_name_the_kafka_outputs_this_test_wires() -> None:
    assert {"dead_letter_topic", "transitions_topic"} <= set(Settings.model_fields)


def _stream() -> tuple[list[bytes], dict[bytes, str], int]:
    """Simulated lines with bad ones sprinkled in, the bad payloads -> expected reason, and the users."""
    from pipelines.offline.simulate import SimConfig, simulate
    from pipelines.offline.simulate_io import iter_ndjson_batches

    sim = simulate(SimConfig(users=300, days=10, seed=17))
    good = [line for batch in iter_ndjson_batches(sim.events, 10_000) for line in batch]
    ts = int(sim.events["ts"][len(good) // 2])
    bad = {
        b'{"event_id":"x1","user_id":"bad-1","ts":' + str(ts).encode() + b',"type":"order"': "malformed_json",
        b"\xff\xfe\x00 not json": "malformed_json",
        json.dumps(
            {"event_id": "x3", "user_id": "bad-3", "ts": ts, "type": "teleport", "channel": "wecom"}
        ).encode(): "unknown_event_type",
        json.dumps(
            {"event_id": "x4", "user_id": "bad-4", "ts": ts, "type": "order", "channel": "app", "amount": -5.0}
        ).encode(): "negative_amount",
    }
    step = len(good) // (len(bad) + 1)
    lines: list[bytes] = []
    for i, payload in enumerate(bad):
        lines += good[i * step : (i + 1) * step] + [payload]
    lines += good[len(bad) * step :]
    return lines, bad, sim.events["user_id"].n_unique()


def test_every_event_is_applied_or_dead_lettered_and_transitions_reach_their_topic(
    kafka_broker, read_topic, tmp_path: Path
) -> None:
    from pipelines.flow.runner import run_pipeline
    from pipelines.io.store.chdb import ChdbStore

    lines, bad, n_users = _stream()
    bootstrap = kafka_broker.bootstrap
    events, dead_letters, transitions = (kafka_broker.create_topic(partitions=p) for p in (2, 1, 2))
    assert produce_lines(bootstrap, events, lines, key_fn=key_by_user_id) == len(lines)

    registry = CollectorRegistry()
    settings = Settings(
        input=f"kafka://{bootstrap}/{events}",
        store=f"chdb://{tmp_path}/s.chdb",
        kafka_eof_exit=True,
        metrics_port=0,
        shards=2,
        dead_letter_topic=f"kafka://{bootstrap}/{dead_letters}",
        transitions_topic=f"kafka://{bootstrap}/{transitions}",
    )
    result = run_pipeline(settings, registry=registry, serve_metrics=False)

    # Conservation: every produced event was applied (or dropped as a duplicate), or is on the dead-letter topic.
    dead = read_topic(bootstrap, dead_letters)
    assert result.events_in == len(lines)
    assert result.events_applied + result.duplicates + len(dead) == len(lines)
    assert Counter(m.value() for m in dead) == Counter(bad.keys())
    position = {m.value(): (m.partition(), m.offset()) for m in read_topic(bootstrap, events)}
    for m in dead:
        headers = dict(m.headers())
        assert headers["lifecycle.reason"].decode() == bad[m.value()]
        assert headers["lifecycle.source.topic"].decode() == events
        where = (int(headers["lifecycle.source.partition"]), int(headers["lifecycle.source.offset"]))
        assert where == position[m.value()], "the dead letter does not point at its record"

    store = ChdbStore(tmp_path / "s.chdb")
    try:
        scores = store.query("SELECT count() AS n, uniqExact(user_id) AS u FROM user_scores FINAL").to_pylist()[0]
        table_transitions = store.query(
            "SELECT user_id, to_stage, toUInt64(version) AS version FROM stage_transitions FINAL"
        ).to_pylist()
        # hex: the String column comes back as Arrow utf8, and a dead letter need not be UTF-8
        rejected = store.query("SELECT hex(payload) AS p FROM rejected_events FINAL").column("p").to_pylist()
    finally:
        store.close()
    assert scores == {"n": n_users, "u": n_users}  # one latest score per user
    assert Counter(bytes.fromhex(p) for p in rejected) == Counter(bad.keys())

    on_topic = [json.loads(m.value()) for m in read_topic(bootstrap, transitions)]
    assert on_topic, "no transitions on the topic"
    assert Counter((t["user_id"], t["to_stage"], t["version"]) for t in on_topic) == Counter(
        (t["user_id"], t["to_stage"], t["version"]) for t in table_transitions
    )

    lag = [s.value for m in registry.collect() for s in m.samples if s.name == "lifecycle_kafka_consumer_lag"]
    assert all(v == 0 for v in lag), f"caught up, yet lag {lag}"
