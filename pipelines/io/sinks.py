"""The Bytewax sink that writes :class:`~pipelines.records.Records` to a :class:`Store`.

Delivery: at-least-once. Each ``write_batch`` groups the records of one Bytewax
batch per table and inserts one block per table; a failed insert raises, which
stops the worker *before* the epoch's snapshot is committed, so a restart
replays from the previous snapshot and re-inserts. Re-inserting is harmless:
every table is a ReplacingMergeTree whose key makes replayed rows collapse
under ``FINAL``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pyarrow as pa
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from pipelines.io.store import Store
from pipelines.metrics import PipelineMetrics
from pipelines.records import Records

_FRESHNESS_SAMPLES = 64  # per insert: observing every row would cost more than the insert


class _StorePartition(StatelessSinkPartition[Records]):
    def __init__(self, store: Store, metrics: PipelineMetrics, clock: Callable[[], float]) -> None:
        self._store = store
        self._m = metrics
        self._clock = clock

    def write_batch(self, items: list[Records]) -> None:
        by_table: dict[str, list[Records]] = defaultdict(list)
        for rec in items:
            by_table[rec.table].append(rec)
        for table, recs in by_table.items():
            data = pa.concat_tables([r.data for r in recs]) if len(recs) > 1 else recs[0].data
            t0 = time.perf_counter()
            try:
                self._store.insert(table, data)
            except Exception:
                self._m.sink_errors.labels(table=table).inc()
                raise
            self._m.sink_seconds.labels(table=table).observe(time.perf_counter() - t0)
            self._m.rows_written.labels(table=table).inc(data.num_rows)
            self._observe_freshness(recs)

    def _observe_freshness(self, recs: list[Records]) -> None:
        now = self._clock()
        for r in recs:
            if r.read_at_ms:
                self._m.pipeline_latency.observe(max(0.0, now - r.read_at_ms / 1000))
            if r.last_event_ms is not None and r.last_event_ms.shape[0]:
                idx = np.linspace(0, r.last_event_ms.shape[0] - 1, min(_FRESHNESS_SAMPLES, r.last_event_ms.shape[0]))
                for ms in r.last_event_ms[idx.astype(np.int64)]:
                    self._m.freshness.observe(max(0.0, now - ms / 1000))


class StoreSink(DynamicSink[Records]):
    """All records of the flow into one store (shared by the workers of a process)."""

    def __init__(self, store: Store, metrics: PipelineMetrics, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._metrics = metrics
        self._clock = clock

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StorePartition:
        return _StorePartition(self._store, self._metrics, self._clock)
