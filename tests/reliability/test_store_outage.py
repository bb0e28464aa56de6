"""Reliability (issue #9): the ClickHouse endpoint goes down, or turns slow, in the middle of a run.

The promise: while the store is unavailable the pipeline waits - it retries each
insert with capped, jittered exponential backoff, reads no more input meanwhile
(backpressure: the in-memory backlog stays within one flush block plus one batch),
says so once in the log and in ``lifecycle_store_up`` - and when the store is back
it writes everything, so the visible result equals that of a run without the outage.

Two levels:

* unit tests of the sink and its retry logic (:mod:`pipelines.io.store.retry`) with an
  injected clock, sleep and jitter source, and a store stub that fails on schedule;
* end-to-end runs of the real pipeline (``run_pipeline``, file input, the production
  :class:`~pipelines.io.store.http.HttpStore`) against the real engine served over
  ClickHouse's HTTP interface (:class:`tests.support.chdb_http.ChdbHttpServer`),
  which the test stops and restarts on the same port, or slows down, mid-run.
  Faults are triggered by observed progress (batches read, the availability gauge,
  retries counted), never by a fixed sleep.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from pipelines.core.rows import Records
from pipelines.flow.runner import RunResult, run_pipeline
from pipelines.io.store.base import Params, Store, StoreError
from pipelines.io.store.http import HttpStore
from pipelines.io.store.migrations import migrate
from pipelines.io.store.retry import RetryPolicy, redact
from pipelines.io.store.sink import StoreSink
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.settings import DEFAULT_SQL, Settings
from tests.support.chdb_http import ChdbHttpServer
from tests.support.visible import conservation, final_rows, sample, scalar

COMPARED_TABLES = ("user_scores", "stage_transitions", "rejected_events")
BATCH_EVENTS = 250  # many batches, so a fault lands mid-stream
DEADLINE_S = 90.0  # generous: the machine is small and shared


# --------------------------------------------------------------------------- unit: retry logic, backlog bound


class FakeTime:
    """A clock that only moves when someone sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


@dataclass
class ScheduledStore(Store):
    """Fails inserts while ``down(now)`` says so; records what it saw at every attempt."""

    fake: FakeTime
    down_between: tuple[float, float]
    transient: bool = True
    metrics: PipelineMetrics | None = None
    partition: Any = None
    inserted: list[int] = field(default_factory=list)  # row ids, in insert order
    attempts: int = 0
    buffered_at_attempt: list[int] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)  # fake times of the failed attempts
    succeeded_at: list[float] = field(default_factory=list)
    up_at_failure: list[float] = field(default_factory=list)

    def insert(self, table: str, data: pa.Table) -> None:
        self.attempts += 1
        if self.partition is not None:
            self.buffered_at_attempt.append(self.partition.buffered_rows)
        start, end = self.down_between
        if start <= self.fake.now < end:
            self.failed_at.append(self.fake.now)
            if self.metrics is not None:
                self.up_at_failure.append(sample(self.metrics.registry, "lifecycle_store_up"))
            raise StoreError(
                "ClickHouse insert at 127.0.0.1:1 failed: connection refused (http://svc:hunter2@127.0.0.1:1)",
                transient=self.transient,
            )
        self.succeeded_at.append(self.fake.now)
        self.inserted.extend(data.column("id").to_pylist())

    def command(self, sql: str, *, params: Params | None = None) -> None:
        raise NotImplementedError

    def query(self, sql: str, *, params: Params | None = None) -> pa.Table:
        raise NotImplementedError


def _records(first_id: int, rows: int) -> Records:
    return Records("user_scores", pa.table({"id": pa.array(range(first_id, first_id + rows), pa.int64())}))


def test_backoff_doubles_from_the_initial_wait_up_to_the_cap_with_jitter_between_half_and_all_of_it() -> None:
    policy = RetryPolicy(initial_backoff_seconds=0.5, max_backoff_seconds=8.0)
    assert [policy.backoff(k) for k in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for k in range(7):
        d = policy.backoff(k)
        assert policy.delay(k, 0.0) == d / 2
        assert d / 2 <= policy.delay(k, 0.999_999) <= d
    assert policy.backoff(10**6) == 8.0  # a week-long outage does not overflow the arithmetic
    with pytest.raises(ValueError, match="initial_backoff_seconds"):
        RetryPolicy(initial_backoff_seconds=5, max_backoff_seconds=1)
    with pytest.raises(ValueError, match="max_outage_seconds"):
        RetryPolicy(max_outage_seconds=-1)


def test_sink_waits_out_an_outage_losing_no_row_and_never_buffering_beyond_its_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeTime()
    metrics = PipelineMetrics(CollectorRegistry())
    outage = (fake.now + 10, fake.now + 75)
    store = ScheduledStore(fake, down_between=outage, metrics=metrics)
    policy = RetryPolicy(initial_backoff_seconds=0.5, max_backoff_seconds=8.0)
    flush_rows, sizes = 100, [7, 30, 61, 2, 45]
    sink = StoreSink(
        store, metrics, clock=fake.clock, flush_rows=flush_rows, flush_seconds=1e9, retry=policy,
        sleep=fake.sleep, rng=lambda: 0.25,
    )  # fmt: skip
    part = sink.build_part("store", "store", None)
    store.partition = part

    sent = 0
    with caplog.at_level(logging.INFO, logger="pipelines.io.store.retry"):
        for i in range(60):
            rows = sizes[i % len(sizes)]
            part.write_batch([_records(sent, rows)])  # blocks while the store is down: backpressure
            sent += rows
            fake.now += 1.0  # a batch's worth of processing
        part.close()

    assert store.inserted == list(range(sent))  # every row once, in order: nothing lost or repeated
    assert max(store.buffered_at_attempt) <= flush_rows + max(sizes) - 1  # the bound of the module docstring
    failed = len(store.failed_at)
    assert failed >= 5 and len(fake.waits) == failed
    assert fake.waits == [policy.delay(k, 0.25) for k in range(failed)]  # the schedule, jitter included
    # waited the outage out (the clock moved only by those waits), overshooting by less than one capped wait
    back_at = min(t for t in store.succeeded_at if t >= outage[0])
    assert outage[1] <= back_at < outage[1] + policy.max_backoff_seconds
    assert back_at - store.failed_at[0] == pytest.approx(sum(fake.waits))
    assert store.up_at_failure == [1.0] + [0.0] * (failed - 1)  # 0 from the first failure until the success
    assert sample(metrics.registry, "lifecycle_store_up") == 1.0
    assert sample(metrics.registry, "lifecycle_store_retries_total", {"table": "user_scores"}) == failed
    assert sample(metrics.registry, "lifecycle_sink_errors_total") == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    back = [r for r in caplog.records if r.levelno == logging.INFO and "available again" in r.getMessage()]
    assert len(warnings) == 1 and "connection refused" in warnings[0].getMessage()
    assert "hunter2" not in caplog.text  # credentials in an error text never reach the log
    assert len(back) == 1 and f"after {sum(fake.waits):.1f} s ({failed} retries)" in back[0].getMessage()


def test_a_non_transient_insert_error_raises_at_once_and_keeps_the_rows_for_the_replay() -> None:
    fake = FakeTime()
    metrics = PipelineMetrics(CollectorRegistry())
    store = ScheduledStore(fake, down_between=(0, 1e12), transient=False)
    part = StoreSink(store, metrics, clock=fake.clock, flush_rows=10, sleep=fake.sleep).build_part("s", "store", None)
    with pytest.raises(StoreError, match="connection refused"):
        part.write_batch([_records(0, 12)])
    assert store.attempts == 1 and fake.waits == []
    assert part.buffered_rows == 12  # still there: the worker stops, the replay re-sends them
    assert sample(metrics.registry, "lifecycle_sink_errors_total", {"table": "user_scores"}) == 1
    assert sample(metrics.registry, "lifecycle_store_retries_total") == 0


def test_an_outage_longer_than_max_outage_seconds_stops_the_sink_with_an_error() -> None:
    fake = FakeTime()
    metrics = PipelineMetrics(CollectorRegistry())
    store = ScheduledStore(fake, down_between=(0, 1e12))
    policy = RetryPolicy(initial_backoff_seconds=1.0, max_backoff_seconds=4.0, max_outage_seconds=30.0)
    sink = StoreSink(store, metrics, clock=fake.clock, flush_rows=10, retry=policy, sleep=fake.sleep, rng=lambda: 0.0)
    part = sink.build_part("s", "store", None)
    t0 = fake.now
    with pytest.raises(StoreError, match=r"store unavailable for 3\d\.\d s \(limit 30\.0 s") as err:
        part.write_batch([_records(0, 10)])
    assert "hunter2" not in str(err.value)
    assert 30.0 <= fake.now - t0 <= 30.0 + 4.0
    assert part.buffered_rows == 10
    assert sample(metrics.registry, "lifecycle_sink_errors_total") == 1
    assert sample(metrics.registry, "lifecycle_store_up") == 0.0  # still down when it gave up


def test_redact_masks_url_credentials_and_password_parameters() -> None:
    text = redact("POST http://svc:hunter2@ch:8123/?password=hunter2&user=svc failed; https://a:b@x/ too")
    assert "hunter2" not in text and "a:b@" not in text
    assert "http://***@ch:8123/" in text and "password=***" in text


# --------------------------------------------------------------------------- end to end: real pipeline, real engine


@dataclass(frozen=True)
class Outcome:
    """What one run left behind: its counters and what its store shows."""

    result: RunResult
    registry: CollectorRegistry
    tables: dict[str, list[dict[str, Any]]]
    raw_rows: dict[str, int]  # rows per table without FINAL: a duplicate insert would show here
    dead_letter_rows: int


def _settings(input_path: Path, url: str) -> Settings:
    return Settings(input=str(input_path), store=url, metrics_port=0, shards=2, batch_events=BATCH_EVENTS)


def _read_outcome(url: str, result: RunResult, registry: CollectorRegistry) -> Outcome:
    store = HttpStore(url)
    try:
        tables = {t: final_rows(store, t) for t in COMPARED_TABLES}
        raw = {t: scalar(store, f"SELECT count() AS n FROM {t}") for t in COMPARED_TABLES}
        dead = scalar(store, "SELECT count() AS n FROM rejected_events FINAL")
    finally:
        store.close()
    return Outcome(result, registry, tables, raw, dead)


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~22k simulated events of 3,000 users over 10 days, plus a few lines that must become dead letters."""
    from pipelines.offline.simulate import SimConfig, simulate
    from pipelines.offline.simulate_io import iter_ndjson_batches

    sim = simulate(SimConfig(users=3000, days=10, seed=11))
    lines = [line for batch in iter_ndjson_batches(sim.events, 50_000) for line in batch]
    for i, bad in enumerate([b"{not json", b'{"event_id":"x","user_id":"u","ts":1,"type":"order","channel":"app"}']):
        lines.insert(1000 + 7000 * i, bad)
    path = tmp_path_factory.mktemp("input") / "events.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def reference(events_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """The same input through the same pipeline and store kind, without a fault."""
    registry = CollectorRegistry()
    with ChdbHttpServer(tmp_path_factory.mktemp("reference") / "chdb") as server:
        result = run_pipeline(_settings(events_file, server.url), registry=registry, serve_metrics=False)
        outcome = _read_outcome(server.url, result, registry)
    events_in, accounted = conservation(registry)
    assert events_in == accounted > 0
    assert outcome.dead_letter_rows == sum(result.rejected.values()) == 2
    return outcome


def _assert_same_visible_result(run: Outcome, reference: Outcome) -> None:
    for table in COMPARED_TABLES:
        assert len(run.tables[table]) == len(reference.tables[table]), table
        assert run.tables[table] == reference.tables[table], f"{table} FINAL differs from the run without faults"
    # no loss and no duplicate insert, even before merges: a retried block was dropped by its token
    assert run.raw_rows == reference.raw_rows
    assert run.result.rows_written == reference.result.rows_written
    events_in, accounted = conservation(run.registry)
    assert events_in == accounted == reference.result.events_in
    assert run.dead_letter_rows == sum(run.result.rejected.values())
    assert run.result.rejected == reference.result.rejected


@dataclass
class OutageObserver:
    """Watches the registry from beside the pipeline, and brings the server back once the outage is observed.

    The server is restarted only after the sink has reported the outage (gauge 0), retried at
    least ``min_retries`` times and ``min_down_s`` passed: progress, not a guess at timing.
    """

    server: ChdbHttpServer
    registry: CollectorRegistry
    min_retries: int = 2
    min_down_s: float = 4.0
    events_in_when_down: float | None = None
    events_in_before_restart: float | None = None
    retries_before_restart: float = 0.0
    restarted_after_s: float | None = None
    error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + DEADLINE_S
            while sample(self.registry, "lifecycle_store_up") != 0.0:
                assert time.monotonic() < deadline, "the sink never reported the store down"
                time.sleep(0.02)
            down_at = time.monotonic()
            self.events_in_when_down = sample(self.registry, "lifecycle_events_in_total")
            while (
                sample(self.registry, "lifecycle_store_retries_total") < self.min_retries
                or time.monotonic() - down_at < self.min_down_s
            ):
                assert time.monotonic() < deadline, "the sink stopped retrying"
                assert sample(self.registry, "lifecycle_store_up") == 0.0
                time.sleep(0.02)
            self.events_in_before_restart = sample(self.registry, "lifecycle_events_in_total")
            self.retries_before_restart = sample(self.registry, "lifecycle_store_retries_total")
            self.restarted_after_s = time.monotonic() - down_at
            self.server.start()  # same port, same data directory
        except BaseException as err:  # reported by the test, not lost in a thread
            self.error = err
            self.server.start()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ChdbHttpServer]:
    server = ChdbHttpServer(tmp_path / "chdb", users={"default": "", "lifecycle": "hunter2"}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.integration
def test_pipeline_waits_out_a_store_outage_and_ends_with_the_scores_of_a_run_without_it(
    events_file: Path, reference: Outcome, served: ChdbHttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    observer = OutageObserver(served, registry)
    watcher = threading.Thread(target=observer.run, name="outage-observer", daemon=True)
    batches = 0
    total_events = reference.result.events_in

    def on_batch(_: int) -> None:
        nonlocal batches
        batches += 1
        if batches == 8:  # mid-stream: take the endpoint away (connection refused from now on)
            served.stop()
            watcher.start()

    # credentials in the URL: the outage warning must not print them
    url = served.url.replace("http://", "http://lifecycle:hunter2@")
    with caplog.at_level(logging.INFO, logger="pipelines.io.store.retry"):
        t0 = time.monotonic()
        result = run_pipeline(_settings(events_file, url), registry=registry, serve_metrics=False, on_batch=on_batch)
        elapsed = time.monotonic() - t0
    watcher.join(timeout=DEADLINE_S)
    assert observer.error is None, observer.error
    assert observer.restarted_after_s is not None and observer.restarted_after_s >= observer.min_down_s

    # backpressure: while the store was down the pipeline read nothing more, and it was down mid-stream
    assert observer.events_in_when_down == observer.events_in_before_restart
    assert observer.events_in_when_down is not None and observer.events_in_when_down < total_events
    # the availability metric went to 0 while down (seen by the observer) and is 1 again
    assert sample(registry, "lifecycle_store_up") == 1.0
    assert sample(registry, "lifecycle_store_retries_total") >= observer.retries_before_restart >= 2
    assert sample(registry, "lifecycle_sink_errors_total") == 0
    # one warning when it went down, one info line when it came back; no secret in either
    warnings = [
        r.getMessage() for r in caplog.records if r.name == "pipelines.io.store.retry" and r.levelno >= logging.WARNING
    ]
    back = [r.getMessage() for r in caplog.records if "store available again" in r.getMessage()]
    assert len(warnings) == 1 and "store unavailable" in warnings[0], warnings
    assert len(back) == 1, back
    assert "hunter2" not in caplog.text

    _assert_same_visible_result(_read_outcome(served.url, result, registry), reference)
    assert elapsed < DEADLINE_S


@pytest.mark.integration
def test_slow_and_timing_out_store_completes_every_insert_without_loss_or_duplicates(
    events_file: Path, reference: Outcome, served: ChdbHttpServer
) -> None:
    """Every insert answers slowly (0.3 s); a burst of inserts answers after the client gave up (2 s > 1 s).

    The timed-out inserts are committed by the server all the same (their answer is lost), and
    retried with the same deduplication token, so no row appears twice even without ``FINAL``.
    The burst is longer than HttpStore's own retries (5 attempts), so the sink's outage handling
    takes over for its tail.
    """
    registry = CollectorRegistry()
    store = HttpStore(served.url, timeout_seconds=1.0)
    migrate(store, DEFAULT_SQL)
    served.slow_down(0.3, inserts_only=True)
    batches = 0
    min_up = 1.0

    def on_batch(_: int) -> None:
        nonlocal batches, min_up
        batches += 1
        min_up = min(min_up, sample(registry, "lifecycle_store_up"))
        if batches == 8:
            served.slow_down(2.0, count=7, inserts_only=True)  # beyond the client's 1 s timeout

    try:
        result = run_pipeline(
            _settings(events_file, served.url), registry=registry, store=store, serve_metrics=False, on_batch=on_batch
        )
    finally:
        store.close()
    served.slow_down(0)
    assert served.delayed >= 7
    # the burst outlasted HttpStore's 5 attempts: the sink saw the store unavailable, retried, and recovered
    assert sample(registry, "lifecycle_store_retries_total") >= 1
    assert sample(registry, "lifecycle_store_up") == 1.0
    assert sample(registry, "lifecycle_sink_errors_total") == 0
    _assert_same_visible_result(_read_outcome(served.url, result, registry), reference)


def test_settings_give_the_sink_its_retry_policy_and_refuse_an_inconsistent_one() -> None:
    s = Settings(store_retry_initial_seconds=0.25, store_retry_max_seconds=3, store_max_outage_seconds=600)
    assert s.store_retry() == RetryPolicy(initial_backoff_seconds=0.25, max_backoff_seconds=3.0, max_outage_seconds=600)
    assert Settings().store_retry().max_outage_seconds == 0  # default: wait out any outage
    with pytest.raises(ValueError, match="initial_backoff_seconds"):
        Settings(store_retry_initial_seconds=20, store_retry_max_seconds=10)
