"""Faults on a 3-partition topic, checked against the input itself.

With several partitions the order in which their batches interleave depends on timing, so the
scores of two runs (faulted or not) are not comparable row by row. What the input alone decides,
whatever the interleaving, is checked instead, in the store after the last run:

* exactly the input's users have a score, one row each under ``FINAL``;
* each user's ``last_event_at`` is the newest timestamp among that user's events in the input
  (an event lost in a crash, or a user whose events were never read, shows here);
* every bad line is one dead letter (none lost, none twice).

Scenarios: ``kill -9`` mid-stream and mid-snapshot, then resume; and the broker killed while the
pipeline still has unread backlog on every partition (so a fetch is in flight), then restarted.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.broker import TansuBroker
from pipelines.io.kafka.producer import key_by_user_id, produce_lines
from pipelines.io.store.chdb import ChdbStore
from tests.reliability.fake_s3 import FakeS3, fake_s3
from tests.reliability.harness import Pipeline, Stream, free_port, make_stream, run_args
from tests.reliability.oracle import Counters, check_conservation, kafka_lag, scrape
from tests.reliability.persistent_broker import PersistentBroker
from tests.reliability.test_crash_resume import _kill_after_epochs, _kill_while_snapshotting
from tests.support.recovery import committed_epoch

pytestmark = pytest.mark.integration

PARTITIONS = 3
ENV = {"LIFECYCLE_KAFKA_EOF_EXIT": "true"}


@pytest.fixture(scope="module")
def stream() -> Stream:
    """~37k lines of 3,000 users over 20 days, with dead letters and producer retries."""
    return make_stream(users=3000, days=20, seed=29)


def newest_event_per_user(stream: Stream) -> dict[str, int]:
    """user_id -> the newest ``ts`` (ms) among the user's good lines: what ``last_event_at`` must show."""
    newest: dict[str, int] = {}
    for line in stream.lines:
        if line in stream.bad:
            continue
        event = json.loads(line)
        newest[event["user_id"]] = max(newest.get(event["user_id"], event["ts"]), event["ts"])
    return newest


def problems_against_input(store_path: Path, stream: Stream) -> list[str]:
    """What the store shows that the input contradicts (empty: nothing)."""
    store = ChdbStore(store_path)
    try:
        rows = store.query("SELECT user_id, last_event_at FROM user_scores FINAL").to_pylist()
        dead = store.query("SELECT count() AS n FROM rejected_events FINAL").to_pylist()[0]["n"]
    finally:
        store.close()
    want = newest_event_per_user(stream)
    got: dict[str, int] = {}
    for r in rows:
        at: dt.datetime = r["last_event_at"]
        got[r["user_id"]] = round(at.timestamp() * 1000)
    out = []
    if len(rows) != len(got):
        out.append(f"{len(rows) - len(got)} users with more than one row under FINAL")
    if missing := sorted(set(want) - set(got)):
        out.append(f"{len(missing)} users of the input have no score, e.g. {missing[:3]}")
    if extra := sorted(set(got) - set(want)):
        out.append(f"{len(extra)} scored users are not in the input, e.g. {extra[:3]}")
    wrong = [(u, got[u], want[u]) for u in sorted(set(want) & set(got)) if got[u] != want[u]]
    if wrong:
        out.append(f"{len(wrong)} users' last_event_at differs from their newest event, e.g. {wrong[:3]}")
    if dead != len(stream.bad):
        out.append(f"{dead} dead letters for {len(stream.bad)} bad lines")
    return out


def _topic(broker: TansuBroker | PersistentBroker, stream: Stream) -> str:
    topic = broker.create_topic(f"p3-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS)
    assert produce_lines(broker.bootstrap, topic, stream.lines, key_fn=key_by_user_id) == len(stream.lines)
    return topic


def test_kill9_mid_stream_and_mid_snapshot_on_three_partitions_applies_every_event_once(
    kafka_broker: TansuBroker, stream: Stream, tmp_path: Path
) -> None:
    url = f"kafka://{kafka_broker.bootstrap}/{_topic(kafka_broker, stream)}"
    store, recovery = tmp_path / "store.chdb", tmp_path / "recovery"
    rng = random.Random(2026)
    args = run_args(url, f"chdb://{store}", recovery=recovery)

    def start() -> Pipeline:
        return Pipeline(args, workdir=tmp_path / "runs", env=ENV)

    with start() as pipe:
        _kill_after_epochs(pipe, recovery, 2, rng)
    with start() as pipe:
        _kill_while_snapshotting(pipe, recovery, 1)
    with start() as pipe:
        _kill_after_epochs(pipe, recovery, 1, rng)
    epochs = committed_epoch(recovery)
    with start() as pipe:
        last = pipe.finish()
    assert last is not None and 0 < last.events_in < len(stream.lines), last  # it resumed
    assert committed_epoch(recovery) > epochs
    assert not check_conservation(last), check_conservation(last)
    problems = problems_against_input(store, stream)
    assert not problems, "\n".join(problems)


@pytest.fixture
def s3() -> Iterator[FakeS3]:
    with fake_s3() as server:
        yield server


def test_broker_killed_with_unread_backlog_on_three_partitions_loses_and_repeats_nothing(
    s3: FakeS3, stream: Stream, tmp_path: Path
) -> None:
    store, recovery = tmp_path / "store.chdb", tmp_path / "recovery"
    port = free_port()
    total = len(stream.lines)
    with PersistentBroker(s3, tmp_path / "tansu.log") as broker:
        url = f"kafka://{broker.bootstrap}/{_topic(broker, stream)}"
        with Pipeline(run_args(url, f"chdb://{store}", recovery=recovery), workdir=tmp_path / "runs",
                      metrics_port=port) as pipe:  # fmt: skip

            def counters() -> tuple[int, float | None]:
                text = scrape(port)
                return (0, None) if text is None else (Counters.from_metrics(text).events_in, kafka_lag(text))

            def backlog() -> bool:
                read, lag = counters()
                return read >= total // 4 and lag is not None and lag > 0

            # all of the topic is there from the start: the consumer is fetching when the broker dies
            assert pipe.until(backlog, what="a quarter of the backlog read"), pipe.log()
            read_at_kill, lag_at_kill = counters()
            broker.kill()
            assert read_at_kill < total and lag_at_kill, (read_at_kill, lag_at_kill)
            noticed = pipe.until(lambda: "Connection refused" in pipe.log(4000), timeout_s=30, what="the outage")
            assert noticed and pipe.alive(), f"the pipeline died with the broker:\n{pipe.log()}"
            broker.start()
            assert pipe.until(lambda: counters() == (total, 0.0), what="reading the rest after the restart")
            pipe.sigterm()
            last = pipe.finish(timeout_s=120)
    assert last is not None
    assert last.events_in == total, "records lost or read twice across the outage"
    assert not check_conservation(last, stream.expected), check_conservation(last, stream.expected)
    problems = problems_against_input(store, stream)
    assert not problems, "\n".join(problems)
