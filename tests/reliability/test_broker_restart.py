"""The broker dies and comes back while the pipeline runs: it waits, reconnects, catches up, and
the final state equals an uninterrupted run.

The broker is tansu with persistent storage (an S3 endpoint in the test process,
:mod:`tests.reliability.fake_s3`), killed with SIGKILL and restarted on the same
address. Half the events are produced before the outage and read; the rest after
the restart. The pipeline must survive the outage (no exit), read every record once
(its ``events in`` counter equals the records on the topic), bring
``lifecycle_kafka_consumer_lag`` back to 0, and end (SIGTERM, drained) with the
reference run's scores, transitions and dead letters.

The events after the restart are produced in chunks whose sizes are multiples of the
source's batch size, each in one produce request: a live consumer then sees them
arrive in the same aligned batches as a reader of the finished topic, so the scores
(which follow the batches' event-time clock) are comparable with the reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.io.kafka.producer import produce_lines
from tests.reliability.conftest import reference_run
from tests.reliability.fake_s3 import FakeS3, fake_s3
from tests.reliability.harness import BATCH_EVENTS, Pipeline, free_port, make_stream, run_args
from tests.reliability.oracle import Counters, assert_equivalent, capture_chdb, check_conservation, kafka_lag, scrape
from tests.reliability.persistent_broker import PersistentBroker
from tests.support.recovery import committed_epoch

pytestmark = pytest.mark.integration

#: one produce request per chunk: lz4, no linger expiry before flush(), well under one batch's byte limit
_ATOMIC = {"linger.ms": 60_000, "batch.num.messages": 100_000}
_CHUNK = 10 * BATCH_EVENTS


@pytest.fixture
def s3() -> Iterator[FakeS3]:
    with fake_s3() as server:
        yield server


def _produce_aligned(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    for i in range(0, len(lines), _CHUNK):
        chunk = lines[i : i + _CHUNK]
        assert produce_lines(bootstrap, topic, chunk, config=_ATOMIC) == len(chunk)


def test_broker_killed_and_restarted_mid_run_pipeline_reconnects_and_matches_reference(
    s3: FakeS3, tmp_path: Path
) -> None:
    stream = make_stream(users=3000, days=20, seed=13)
    half = len(stream.lines) // 2 // BATCH_EVENTS * BATCH_EVENTS
    store, recovery = tmp_path / "store.chdb", tmp_path / "recovery"
    port = free_port()
    with PersistentBroker(s3, tmp_path / "tansu.log") as broker:
        topic = broker.create_topic("events")
        url = f"kafka://{broker.bootstrap}/{topic}"
        _produce_aligned(broker.bootstrap, topic, stream.lines[:half])
        with Pipeline(run_args(url, f"chdb://{store}", recovery=recovery), workdir=tmp_path / "runs",
                      metrics_port=port) as pipe:  # fmt: skip

            def read(n: int) -> bool:
                text = scrape(port)
                return text is not None and Counters.from_metrics(text).events_in >= n and kafka_lag(text) == 0

            assert pipe.until(lambda: read(half), what="reading the events before the outage"), pipe.log()
            broker.kill()
            # the client notices (librdkafka logs the refused connections) and retries; the process stays up
            noticed = pipe.until(lambda: "Connection refused" in pipe.log(4000), timeout_s=30, what="the outage")
            assert noticed and pipe.alive(), f"the pipeline died with the broker:\n{pipe.log()}"
            outage = committed_epoch(recovery)  # it keeps running epochs through the outage (idle, not stuck)
            assert pipe.until(lambda: committed_epoch(recovery) >= outage + 5, what="epochs during the outage")
            broker.start()
            _produce_aligned(broker.bootstrap, topic, stream.lines[half:])
            assert pipe.until(lambda: read(len(stream.lines)), what="catching up after the restart"), pipe.log()
            text = scrape(port)
            assert text is not None and kafka_lag(text) == 0
            pipe.sigterm()
            counters = pipe.finish(timeout_s=120)
        assert counters is not None
        assert counters.events_in == len(stream.lines), "records lost or read twice across the outage"
        assert not check_conservation(counters, stream.expected), check_conservation(counters, stream.expected)
        assert s3.object_count("tansu") > 0, "the broker did not use the persistent store"
        reference = reference_run(url, tmp_path / "reference", stream, env={"LIFECYCLE_KAFKA_EOF_EXIT": "true"})
    assert_equivalent(capture_chdb(store), reference.visible, expected=stream.expected, counters=counters)
