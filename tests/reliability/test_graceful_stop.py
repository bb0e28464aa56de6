"""SIGTERM drains a Kafka run: a restart then neither loses nor repeats a single event.

Bytewax 0.21 has no drain of its own (SIGINT stops the workers where they are, and
SIGTERM's default action kills the process), so ``lifecycle run`` installs a SIGTERM
handler that ends the Kafka partitions at their next poll: the flow reaches end of
input, flushes pending scores, writes everything buffered and commits a final epoch
holding each partition's offset. What a restart must then show:

* the runs together read every record exactly once (the sum of their ``events in``
  counters equals the records on the topic: nothing re-read, nothing skipped);
* each dead letter is on the dead-letter topic once and in ``rejected_events`` once,
  even without ``FINAL`` (nothing was replayed, so nothing needed collapsing);
* a further resume from the recovery store starts exactly at the end (reads 0 events);
* the store equals the uninterrupted reference run (oracle).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from devtools.broker import TansuBroker
from pipelines.io.kafka.producer import produce_lines
from tests.integration.conftest import _read_topic
from tests.reliability.conftest import Reference
from tests.reliability.harness import Pipeline, Stream, free_port, run_args
from tests.reliability.oracle import Counters, assert_equivalent, capture_chdb, diff_visible, kafka_lag, scrape
from tests.support.recovery import committed_epoch

pytestmark = pytest.mark.integration

SIGTERM_LOG = "SIGTERM received: draining"


def _stop_after_epochs(pipe: Pipeline, recovery: Path, epochs: int) -> Counters:
    start = committed_epoch(recovery)
    reached = pipe.until(lambda: committed_epoch(recovery) >= start + epochs, what=f"{epochs} committed epochs")
    assert reached, f"the run ended by itself (it must run until stopped):\n{pipe.log()}"
    pipe.sigterm()
    counters = pipe.finish(timeout_s=120)  # exit 143 after the drain (docs/operations.md), not a death
    assert counters is not None
    assert pipe.log(20_000).count(SIGTERM_LOG) == 1, pipe.log()
    return counters


def test_sigterm_drains_and_restart_neither_loses_nor_repeats_events(
    kafka_broker: TansuBroker, kafka_input: tuple[Stream, str, Reference], tmp_path: Path
) -> None:
    stream, url, reference = kafka_input
    store, recovery = tmp_path / "store.chdb", tmp_path / "recovery"
    dlq = kafka_broker.create_topic(partitions=1)
    env = {"LIFECYCLE_DEAD_LETTER_TOPIC": f"kafka://{kafka_broker.bootstrap}/{dlq}"}
    args = run_args(url, f"chdb://{store}", recovery=recovery)
    runs: list[Counters] = []

    # two stops mid-stream
    for _ in range(2):
        with Pipeline(args, workdir=tmp_path / "runs", env=env) as pipe:
            runs.append(_stop_after_epochs(pipe, recovery, 3))
    # a third run to the end of the topic, stopped once it is caught up (lag 0, every record read)
    port = free_port()
    with Pipeline(args, workdir=tmp_path / "runs", env=env, metrics_port=port) as pipe:
        read_before = sum(c.events_in for c in runs)

        def caught_up() -> bool:
            text = scrape(port)
            if text is None:
                return False
            return Counters.from_metrics(text).events_in + read_before >= len(stream.lines) and kafka_lag(text) == 0

        assert pipe.until(caught_up, what="catching up"), pipe.log()
        pipe.sigterm()
        last = pipe.finish(timeout_s=120)
        assert last is not None
        runs.append(last)

    assert all(0 < c.events_in < len(stream.lines) for c in runs[:2]), f"a stop did not land mid-stream: {runs}"
    total = sum(runs, Counters())
    assert total.events_in == len(stream.lines), f"records read {[c.events_in for c in runs]}: lost or re-read"
    # a resume from the final snapshot reads nothing: the stored offset is exactly the end
    with Pipeline(args, workdir=tmp_path / "runs", env={**env, "LIFECYCLE_KAFKA_EOF_EXIT": "true"}) as pipe:
        after = pipe.finish()
    assert after is not None and after.events_in == 0, after

    dead = Counter(m.value() for m in _read_topic(kafka_broker.bootstrap, dlq))
    assert dead == Counter(stream.bad), "dead letters on the topic lost or doubled"
    visible = capture_chdb(store)
    assert visible.dead_letter_rows_raw == len(stream.bad), "dead letters doubled in rejected_events (before FINAL)"
    assert_equivalent(visible, reference.visible, expected=stream.expected, counters=total)


def _cadence_lines() -> list[bytes]:
    """100 users active in two batches 20 s of event time apart (inside the 30 s score cadence, so the
    second batch leaves them *pending*), then 3,000 events of other users only."""
    t0 = 1_790_000_000_000

    def line(event_id: str, user: str, ts: int) -> bytes:
        event = {"event_id": event_id, "user_id": user, "ts": ts, "type": "page_view", "channel": "app"}
        return json.dumps(event).encode()

    users = [f"a{i}" if i < 100 else f"f{b}-{i}" for b in range(2) for i in range(300)]
    lines = [line(f"e{k}", user, t0 + (k // 300) * 20_000 + k % 300) for k, user in enumerate(users)]
    return lines + [line(f"g{j}", f"g{j % 500}", t0 + 40_000 + j * 1000) for j in range(3000)]


def test_sigterm_while_users_await_their_score_cadence_resumes_to_reference_scores(
    kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    from prometheus_client import CollectorRegistry

    from pipelines.flow.runner import run_pipeline
    from pipelines.io.kafka.stop import STOP_REQUESTED, request_stop
    from pipelines.settings import Settings

    lines = _cadence_lines()
    topic = kafka_broker.create_topic(partitions=1)
    assert produce_lines(kafka_broker.bootstrap, topic, lines) == len(lines)
    base: dict[str, Any] = {
        "input": f"kafka://{kafka_broker.bootstrap}/{topic}",
        "batch_events": 300,
        "shards": 1,
        "metrics_port": 0,
        "kafka_eof_exit": True,
    }
    run_pipeline(Settings(store=f"chdb://{tmp_path}/ref", **base), registry=CollectorRegistry(), serve_metrics=False)
    faulted = Settings(store=f"chdb://{tmp_path}/s", recovery_dir=tmp_path / "rec", epoch_seconds=0.2, **base)
    batches = 0

    def stop_after_two_batches(_: int) -> None:  # what the SIGTERM handler does, at an exact point
        nonlocal batches
        batches += 1
        if batches == 2:
            request_stop()

    try:
        first = run_pipeline(
            faulted, registry=CollectorRegistry(), serve_metrics=False, on_batch=stop_after_two_batches
        )
    finally:
        STOP_REQUESTED.clear()
    second = run_pipeline(faulted, registry=CollectorRegistry(), serve_metrics=False)
    assert (first.events_in, second.events_in) == (600, len(lines) - 600)
    problems = diff_visible(capture_chdb(tmp_path / "s"), capture_chdb(tmp_path / "ref"))
    assert not problems, "\n".join(problems)


def test_sigterm_to_a_local_cluster_drains_every_member_and_the_restart_loses_nothing(
    kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    """``lifecycle run --processes 2``: the parent forwards SIGTERM, both members drain and exit 143."""
    from pipelines.io.store.http import HttpStore
    from tests.reliability.harness import make_stream
    from tests.support.chdb_http import ChdbHttpServer

    stream = make_stream(users=1500, days=10, seed=21)
    topic = kafka_broker.create_topic(partitions=2)
    assert produce_lines(kafka_broker.bootstrap, topic, stream.lines) == len(stream.lines)
    recovery = tmp_path / "recovery"
    with ChdbHttpServer(tmp_path / "data") as srv:
        args = [*run_args(f"kafka://{kafka_broker.bootstrap}/{topic}", srv.url, recovery=recovery), "--processes", "2"]
        with Pipeline(args, workdir=tmp_path / "runs", summary=False) as pipe:
            reached = pipe.until(lambda: committed_epoch(recovery) >= 3, what="3 committed epochs")
            assert reached, pipe.log()
            pipe.sigterm()
            assert pipe.wait(120) == 143, pipe.log()  # every member drained: 143 after a drain, not a kill
            out = pipe.log(50_000)
        assert "forwarding it to 2 cluster process(es)" in out
        assert out.count(SIGTERM_LOG) == 2, out  # one drain per member
        # the restart reads the rest to the end: every user and every dead letter is there, once under FINAL
        env = {"LIFECYCLE_KAFKA_EOF_EXIT": "true"}
        with Pipeline(args, workdir=tmp_path / "runs", env=env, summary=False) as rest:
            assert rest.wait(300) == 0, rest.log()
        store = HttpStore(srv.url)
        try:
            users = store.query("SELECT count() AS n, uniqExact(user_id) AS u FROM user_scores FINAL").to_pylist()[0]
            dead = store.query("SELECT count() AS n FROM rejected_events FINAL").to_pylist()[0]["n"]
        finally:
            store.close()
    assert users["n"] == users["u"] == stream.expected.users
    assert dead == stream.expected.dead_letters
