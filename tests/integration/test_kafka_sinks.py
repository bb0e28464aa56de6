"""Dead-letter and transitions sinks against the real tansu broker, fed by the real pure pieces
(decode_batch, ShardProcessor, ScoreStep), their Bytewax partitions driven directly.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from pipelines.contract.decode import decode_batch
from pipelines.contract.events import RawBatch, Rejection, RejectReason
from pipelines.core.rows import Records
from pipelines.core.shard import ShardConfig, ShardProcessor
from pipelines.flow.dataflow import ScoreStep, split_by_shard
from pipelines.io.kafka.sinks import KafkaDeadLetterSink, KafkaSinkError, KafkaTransitionsSink, transition_messages
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.scoring.scorer import DEFAULT_MODEL_DIR, Scorer

pytestmark = pytest.mark.integration

NOW_MS = 1_800_000_000_000  # after every simulated event: nothing is "in the future"


def _rejections() -> list[Rejection]:
    """Real dead letters: decoder rejects of a source batch plus a late event from the shard step."""
    ts = 1_790_856_903_000
    good = [
        json.dumps({"event_id": f"g{i}", "user_id": "u1", "ts": ts + i, "type": "page_view", "channel": "app"}).encode()
        for i in range(3)
    ]
    bad = [
        b'{"event_id":"b1","user_id":"u2","ts":1790856903000,"type":"order"',  # cut off: malformed
        b"\xff\xfe not utf-8 \x00\x01",  # invalid UTF-8 bytes must survive as they are
        json.dumps({"event_id": "b3", "user_id": "u3", "ts": ts, "type": "teleport", "channel": "app"}).encode(),
        json.dumps(
            {"event_id": "b4", "user_id": "u4", "ts": ts, "type": "order", "channel": "app", "amount": -1}
        ).encode(),
    ]
    payloads = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3]]
    raw = RawBatch("events-in", 3, np.arange(100, 100 + len(payloads), dtype=np.int64), payloads)
    decoded = decode_batch(raw, now_ms=NOW_MS)
    assert len(decoded.rejects) == 4

    proc = ShardProcessor(ShardConfig(allowed_lateness_ms=60_000))
    proc.process(decoded.events)
    old = json.dumps({"event_id": "l1", "user_id": "u1", "ts": ts - 3_600_000, "type": "share", "channel": "app"})
    late = proc.process(decode_batch(RawBatch("events-in", 3, np.array([200]), [old.encode()]), now_ms=NOW_MS).events)
    assert [r.reason for r in late.rejects] == [RejectReason.LATE]
    return [*decoded.rejects, *late.rejects]


def test_dead_letters_carry_the_original_bytes_and_their_origin_in_headers(kafka_broker, read_topic) -> None:
    rejects = _rejections()
    topic = kafka_broker.create_topic(partitions=1)
    sink = KafkaDeadLetterSink(kafka_broker.bootstrap, topic, pipeline_version="9.8.7")
    part = sink.build_part("dead_letters", sink.list_parts()[0], None)
    try:
        part.write_batch([rejects[:2], rejects[2:]])
        part.snapshot()  # the epoch boundary: everything acknowledged, or it raises
    finally:
        part.close()

    msgs = read_topic(kafka_broker.bootstrap, topic)
    assert [m.value() for m in msgs] == [r.payload for r in rejects]  # byte for byte, in order
    for m, r in zip(msgs, rejects, strict=True):
        assert m.key() is None
        assert m.headers() == [
            ("lifecycle.reason", r.reason.value.encode()),
            ("lifecycle.detail", r.detail.encode()),
            ("lifecycle.source.topic", b"events-in"),
            ("lifecycle.source.partition", b"3"),
            ("lifecycle.source.offset", str(r.offset).encode()),
            ("lifecycle.pipeline.version", b"9.8.7"),
        ]
    assert [dict(m.headers())["lifecycle.reason"] for m in msgs] == [
        b"malformed_json",
        b"malformed_json",
        b"unknown_event_type",
        b"negative_amount",
        b"late",
    ]
    assert [int(dict(m.headers())["lifecycle.source.offset"]) for m in msgs] == [101, 103, 104, 106, 200]


def test_oversized_dead_letter_is_cut_to_fit_and_says_how_long_it_was(kafka_broker, read_topic) -> None:
    topic = kafka_broker.create_topic(partitions=1)
    big = b"{" + b"x" * 299_999
    reject = Rejection(RejectReason.OVERSIZED, "events-in", 0, 7, big, "300000 bytes > 65536")
    sink = KafkaDeadLetterSink(
        kafka_broker.bootstrap, topic, pipeline_version="1", config={"message.max.bytes": 100_000}
    )
    part = sink.build_part("dead_letters", sink.list_parts()[0], None)
    part.write_batch([[reject]])
    part.close()
    (msg,) = read_topic(kafka_broker.bootstrap, topic)
    assert msg.value() == big[: 100_000 - 16_384]
    headers = dict(msg.headers())
    assert headers["lifecycle.payload.truncated"] == b"300000" and headers["lifecycle.reason"] == b"oversized"


def _transition_records() -> list[Records]:
    """Records as the flow's score step makes them, from a small simulated stream."""
    from pipelines.offline.simulate import SimConfig, simulate
    from pipelines.offline.simulate_io import iter_ndjson_batches

    sim = simulate(SimConfig(users=300, days=20, seed=3))
    metrics = PipelineMetrics(CollectorRegistry())
    cfg = ShardConfig()
    score = ScoreStep(Scorer.from_dir(DEFAULT_MODEL_DIR, device="cpu"), cfg, metrics, lambda: NOW_MS / 1000)
    procs: dict[str, ShardProcessor] = {}
    out: list[Records] = []
    for i, lines in enumerate(iter_ndjson_batches(sim.events, 5000)):
        raw = RawBatch("events", 0, np.arange(i * 5000, i * 5000 + len(lines), dtype=np.int64), lines)
        for key, (_, sl) in split_by_shard(decode_batch(raw, now_ms=NOW_MS), 2):
            proc = procs.setdefault(key, ShardProcessor(cfg))
            out += score(proc.process(sl), proc, int(key[1:]), 2)
    for key, proc in procs.items():
        out += score(proc.flush(), proc, int(key[1:]), 2)
    return out


def test_transitions_topic_has_one_json_message_per_transition_keyed_by_user(kafka_broker, read_topic) -> None:
    records = _transition_records()
    rows = [row for r in records if r.table == "stage_transitions" for row in r.data.to_pylist()]
    assert len(rows) > 200 and any(r.table == "user_scores" for r in records)
    topic = kafka_broker.create_topic(partitions=3)
    sink = KafkaTransitionsSink(kafka_broker.bootstrap, topic)
    part = sink.build_part("transitions", sink.list_parts()[0], None)
    try:
        half = len(records) // 2
        part.write_batch(records[:half])  # user_scores records among them: ignored
        part.snapshot()
        part.write_batch(records[half:])
    finally:
        part.close()

    msgs = read_topic(kafka_broker.bootstrap, topic)
    assert len(msgs) == len(rows)
    values = [json.loads(m.value()) for m in msgs]
    for m, v in zip(msgs, values, strict=True):
        assert m.key() == v["user_id"].encode()
        assert list(v) == [
            "user_id",
            "from_stage",
            "to_stage",
            "at",
            "churn_risk",
            "purchase_propensity",
            "reasons",
            "model_version",
            "version",
            "taxonomy",
            "taxonomy_version",
            "action",
            "action_rule",
            "action_at",
        ]

    def expected(row: dict) -> tuple:
        at = row["at"].astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return (
            row["user_id"],
            row["from_stage"],
            row["to_stage"],
            at,
            round(row["churn_risk"], 6),
            round(row["purchase_propensity"], 6),
            tuple(row["reasons"]),
            row["model_version"],
            row["version"],
            row["taxonomy"],
            row["action"],
            row["action_rule"],
            None
            if row["action_at"] is None
            else row["action_at"].astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        )

    def got(v: dict) -> tuple:
        return (
            *list(v.values())[:6],
            tuple(v["reasons"]),
            v["model_version"],
            v["version"],
            v["taxonomy"],
            v["action"],
            v["action_rule"],
            v["action_at"],
        )

    assert Counter(got(v) for v in values) == Counter(expected(r) for r in rows)
    assert all(datetime.fromisoformat(v["at"]).tzinfo is not None for v in values)
    # One user's transitions are in one partition, in the order they happened.
    by_user: dict[str, set[int]] = {}
    for m, v in zip(msgs, values, strict=True):
        by_user.setdefault(v["user_id"], set()).add(m.partition())
    assert all(len(p) == 1 for p in by_user.values())
    for user in list(by_user)[:50]:
        versions = [v["version"] for v in values if v["user_id"] == user]
        assert versions == sorted(versions)


def test_transition_message_format_is_exact() -> None:
    import pyarrow as pa

    table = pa.table(
        {
            "user_id": pa.array(["u一"], pa.string()),
            "from_stage": ["none"],
            "to_stage": ["new"],
            "at": pa.array([1_790_856_903_123], pa.timestamp("ms", tz="UTC")),
            "churn_risk": pa.array([0.731], pa.float32()),
            "purchase_propensity": pa.array([0.05], pa.float32()),
            "reasons": pa.array([["no activity for 3 days"]], pa.list_(pa.string())),
            "model_version": ["m1"],
            "version": pa.array([1_790_856_903_123], pa.uint64()),
            "taxonomy": ["lifecycle-5"],
            "taxonomy_version": pa.array([1], pa.uint32()),
            "action": ["welcome_coupon"],
            "action_rule": ["welcome-new"],
            "action_at": pa.array([1_790_856_903_123], pa.timestamp("ms", tz="UTC")),
        }
    )
    ((key, value),) = transition_messages(table)
    assert key == "u一".encode()
    assert (
        value
        == (
            '{"user_id":"u一","from_stage":"none","to_stage":"new","at":"2026-10-01T12:15:03.123Z",'
            '"churn_risk":0.731,"purchase_propensity":0.05,"reasons":["no activity for 3 days"],'
            '"model_version":"m1","version":1790856903123,"taxonomy":"lifecycle-5","taxonomy_version":1,'
            '"action":"welcome_coupon","action_rule":"welcome-new","action_at":"2026-10-01T12:15:03.123Z"}'
        ).encode()
    )


def test_failed_delivery_fails_the_epoch_snapshot_and_never_shows_secrets(caplog, capfd) -> None:
    secret = "s3cr3t-Pa55word"
    config = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "svc-lifecycle",
        "sasl.password": secret,
        "message.timeout.ms": 500,
    }
    caplog.set_level(logging.DEBUG)
    sink = KafkaDeadLetterSink("127.0.0.1:1", "dead-letters", config=config, pipeline_version="1", flush_timeout_s=10)
    part = sink.build_part("dead_letters", sink.list_parts()[0], None)
    part.write_batch([[Rejection(RejectReason.MALFORMED_JSON, "events", 0, 1, b"{", "cut off")]])
    with pytest.raises(KafkaSinkError, match=r"'dead-letters' on 127\.0\.0\.1:1: 1 of 1 message\(s\) failed") as exc:
        part.snapshot()
    assert part.failed == 1
    out, err = capfd.readouterr()
    for text in (str(exc.value), caplog.text, out, err):
        assert secret not in text
    assert "sasl.password" in caplog.text  # the option's name is logged, its value is not

    tsink = KafkaTransitionsSink("127.0.0.1:1", "transitions", config=config, flush_timeout_s=10)
    tpart = tsink.build_part("transitions", tsink.list_parts()[0], None)
    with pytest.raises(KafkaSinkError):
        tpart.write_batch(_transition_records()[:3])
        tpart.close()
