"""The Bytewax sink that writes :class:`~pipelines.core.rows.Records` to a :class:`Store`.

Inserts are the expensive part of the store path (about 10 ms fixed per chDB
insert, DESIGN.md), so records are buffered per table and written as few, large
blocks. Delivery and ordering, step by step:

1. ``write_batch`` appends records to the buffer; it inserts when the buffer
   holds ``flush_rows`` rows or its oldest record is ``flush_seconds`` old.
2. ``snapshot`` (Bytewax calls it at the end of every epoch, after the epoch's
   last ``write_batch`` and *before* the epoch's state snapshots are committed)
   inserts everything buffered. So no epoch is ever recorded as done while its
   scores are still only in memory: a crash loses no scores, it replays them.
3. While the store is unavailable (connection refused, timeouts, an overloaded
   server: transient errors), an insert is retried in place with capped
   exponential backoff and jitter (:mod:`pipelines.io.store.retry`), and
   ``write_batch``/``snapshot`` do not return until it succeeds. No buffered
   row is dropped, and the epoch cannot commit before its rows are written,
   so step 2 holds through any outage.
4. A non-transient failed insert (and, when ``max_outage_seconds`` is set, an
   outage that lasted that long) raises, which stops the worker before the
   epoch commits; the restart replays from the previous snapshot and
   re-inserts. Re-inserting is harmless: every table is a ReplacingMergeTree
   whose key collapses replayed rows under ``FINAL`` (at-least-once delivery,
   idempotent result).
5. ``close`` (end of a finite input) inserts what is left, retrying like 3.

Memory bound while the store is down (backpressure): the retry loop runs on the
Bytewax worker's thread, so the worker stops - it polls no source and runs no
step until the insert succeeds. The buffer therefore never holds more than
``flush_rows`` plus the rows of the one ``write_batch`` call that crossed it
(a ``snapshot``/``close`` flush holds less). In a multi-process cluster the
other workers keep going only until the current epoch ends: Bytewax starts no
new epoch on any input before the previous one closed everywhere, and it
cannot close while this sink blocks, so what piles up in transit is bounded by
one epoch of input (``LIFECYCLE_EPOCH_SECONDS``).
"""

from __future__ import annotations

import functools
import random
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pyarrow as pa
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from pipelines.core.rows import Records
from pipelines.io.store.base import Store
from pipelines.io.store.retry import OutageGuard, RetryPolicy
from pipelines.monitoring.metrics import PipelineMetrics

_FRESHNESS_SAMPLES = 64  # per insert: observing every row would cost more than the insert
PART = "store"


class _StorePartition(StatefulSinkPartition[Records, None]):
    def __init__(
        self,
        store: Store,
        metrics: PipelineMetrics,
        clock: Callable[[], float],
        flush_rows: int,
        flush_seconds: float,
        guard: OutageGuard,
    ) -> None:
        self._store = store
        self._m = metrics
        self._clock = clock
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._guard = guard
        self._buf: dict[str, list[Records]] = defaultdict(list)
        self._rows = 0
        self._oldest = 0.0
        self._failed = False  # an insert failed for good: the worker is stopping (see close)

    @property
    def buffered_rows(self) -> int:
        """Rows held in memory, not yet written (bounded: see the module docstring)."""
        return self._rows

    def write_batch(self, items: list[Records]) -> None:
        if not items:
            return
        if not self._rows:
            self._oldest = self._clock()
        for rec in items:
            self._buf[rec.table].append(rec)
            self._rows += rec.data.num_rows
        if self._rows >= self._flush_rows or self._clock() - self._oldest >= self._flush_seconds:
            self._flush()

    def snapshot(self) -> None:
        self._flush()  # before the epoch commits: see the module docstring, step 2
        return None

    def close(self) -> None:
        # After a failed insert the worker is already stopping with that error: flushing again would only
        # raise a second one inside Bytewax's cleanup, where a panic aborts the process (SIGABRT) before the
        # first error is reported. The rows are not lost: their epoch never committed, a restart replays them.
        if not self._failed:
            self._flush()

    def _flush(self) -> None:
        for table in list(self._buf):
            recs = self._buf[table]
            data = pa.concat_tables([r.data for r in recs]) if len(recs) > 1 else recs[0].data
            try:
                insert = functools.partial(self._timed_insert, table, data)
                seconds = self._guard.call(f"insert into {table} ({data.num_rows} rows)", table, insert)
            except Exception:
                self._m.sink_errors.labels(table=table).inc()
                self._failed = True
                raise
            self._m.sink_seconds.labels(table=table).observe(seconds)
            self._m.rows_written.labels(table=table).inc(data.num_rows)
            self._observe_freshness(recs)
            del self._buf[table]  # only once written: a failed insert keeps its rows for the replay
            self._rows -= sum(r.data.num_rows for r in recs)

    def _timed_insert(self, table: str, data: pa.Table) -> float:
        """Insert and return the seconds the successful attempt took (the insert latency)."""
        t0 = time.perf_counter()
        self._store.insert(table, data)
        return time.perf_counter() - t0

    def _observe_freshness(self, recs: list[Records]) -> None:
        now = self._clock()
        for r in recs:
            if r.read_at_ms:
                self._m.pipeline_latency.observe(max(0.0, now - r.read_at_ms / 1000))
            if r.last_event_ms is not None and r.last_event_ms.shape[0]:
                idx = np.linspace(0, r.last_event_ms.shape[0] - 1, min(_FRESHNESS_SAMPLES, r.last_event_ms.shape[0]))
                for ms in r.last_event_ms[idx.astype(np.int64)]:
                    self._m.freshness.observe(max(0.0, now - ms / 1000))


class StoreSink(FixedPartitionedSink[Records, None]):
    """All records of the flow into one store, through one buffering partition.

    Items are ``(key, Records)``; every key maps to the single partition, so a
    multi-worker process still inserts large blocks from one place.
    """

    def __init__(
        self,
        store: Store,
        metrics: PipelineMetrics,
        *,
        clock: Callable[[], float] = time.time,
        flush_rows: int = 200_000,
        flush_seconds: float = 0.5,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        """``retry`` (default :class:`RetryPolicy`'s) paces the waits while the store is down;
        ``clock``, ``sleep`` and ``rng`` (jitter) are injectable for tests.
        """
        if flush_rows <= 0 or flush_seconds < 0:
            raise ValueError(f"flush_rows must be > 0 and flush_seconds >= 0, got {flush_rows}, {flush_seconds}")
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = rng

    def list_parts(self) -> list[str]:
        return [PART]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _StorePartition:
        guard = OutageGuard(
            self._retry,
            up=self._metrics.store_up,
            retries=self._metrics.store_retries,
            clock=self._clock,
            sleep=self._sleep,
            rng=self._rng,
        )
        return _StorePartition(self._store, self._metrics, self._clock, self._flush_rows, self._flush_seconds, guard)
