"""Fixtures of the reliability scenarios: inputs, a broker, and reference runs without faults."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.broker import TansuBroker
from pipelines.io.kafka.producer import produce_lines
from tests.reliability.harness import Pipeline, Stream, make_stream, run_args
from tests.reliability.oracle import Counters, Visible, capture_chdb, check_conservation, check_store


@dataclass(frozen=True, slots=True)
class Reference:
    """An uninterrupted run of a stream: what every faulted run must end up showing."""

    visible: Visible
    counters: Counters


def reference_run(input_: str, workdir: Path, stream: Stream, env: dict[str, str] | None = None) -> Reference:
    """Run ``input_`` once without faults (and without a recovery store) into a fresh embedded store.

    The reference is checked against the input on its own first (conservation, dead
    letters, users), so a scenario compares against a run known to be right.
    """
    store = workdir / "reference.chdb"
    counters = Pipeline(run_args(input_, f"chdb://{store}"), workdir=workdir, env=env).finish()
    assert counters is not None
    visible = capture_chdb(store)
    problems = check_conservation(counters, stream.expected) + check_store(visible, stream.expected, counters)
    assert not problems, "the reference run itself is wrong:\n" + "\n".join(problems)
    return Reference(visible, counters)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[TansuBroker]:
    """One in-memory tansu broker for the package; each test makes its own topic."""
    with TansuBroker() as broker:
        yield broker


@pytest.fixture(scope="module")
def file_stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Stream, Path]:
    """~60k events of 5,000 users over 20 days, with dead letters and retries mixed in, as an NDJSON file."""
    stream = make_stream(users=5000, days=20, seed=5)
    return stream, stream.write(tmp_path_factory.mktemp("input") / "events.jsonl")


@pytest.fixture(scope="module")
def file_reference(file_stream: tuple[Stream, Path], tmp_path_factory: pytest.TempPathFactory) -> Reference:
    stream, path = file_stream
    return reference_run(str(path), tmp_path_factory.mktemp("reference"), stream)


@pytest.fixture(scope="module")
def kafka_input(kafka_broker: TansuBroker, tmp_path_factory: pytest.TempPathFactory) -> tuple[Stream, str, Reference]:
    """The stream on a one-partition topic, and its reference run (read to the end, no recovery store).

    One partition: with several, the order in which their batches interleave (and so the
    shards' event-time clock, and the scores) depends on timing even without faults.
    """
    stream = make_stream(users=3000, days=20, seed=9)
    topic = kafka_broker.create_topic(partitions=1)
    assert produce_lines(kafka_broker.bootstrap, topic, stream.lines) == len(stream.lines)
    url = f"kafka://{kafka_broker.bootstrap}/{topic}"
    ref = reference_run(url, tmp_path_factory.mktemp("kafka-ref"), stream, env={"LIFECYCLE_KAFKA_EOF_EXIT": "true"})
    return stream, url, ref
