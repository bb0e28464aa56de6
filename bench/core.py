"""Feature-engine benchmarks (issue: streaming feature engine), JSON lines like ``bench.run``.

* ``core_events_per_s``: pre-generated JSON events in memory through the real flow
  (decode -> state -> features -> CPU scoring -> chDB), ~1M users, >= 5M events.
* ``state_bytes_per_user`` at 1M and 5M users (arrays, hash index and id strings).
* ``core_2proc_events_per_s``: the same pipeline in 2 processes at once, each on its own half of
  the users (disjoint user sets, one chDB store each; a Bytewax cluster is the scale-out issue).
* ``score_latency_p99_s``: event time to score written, at half of the measured max load, with
  events stamped with the wall clock as they are produced.

Sizes: BENCH_CORE_USERS (default 1,000,000), BENCH_CORE_DAYS (default 10), BENCH_LATENCY_SECONDS (20).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from prometheus_client import CollectorRegistry

from pipelines.contract.events import TYPE_CODE, EventColumns, RawBatch
from pipelines.contract.ids import hash_strings
from pipelines.core.defaults import default_playbook
from pipelines.core.ledger import ActionLedger
from pipelines.core.state import ShardState
from pipelines.flow.runner import open_migrated_store, run_pipeline
from pipelines.io.files import IteratorSource
from pipelines.io.store.chdb import ChdbStore
from pipelines.io.store.migrations import migrate
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import iter_ndjson_batches, to_ndjson_bytes
from pipelines.settings import Settings


def emit(name: str, value: float, unit: str, **extra: object) -> None:
    print(json.dumps({"name": name, "value": round(value, 4), "unit": unit, **extra}), flush=True)


def _settings(tmp: Path, **over: object) -> Settings:
    opts: dict[str, object] = {"metrics_port": 0, "batch_events": 50_000, **over}
    return Settings(store=f"chdb://{tmp}/store.chdb", **opts)


def _core_run(
    users: int, days: int, seed: int, user_slice: tuple[int, int] | None, **settings: object
) -> dict[str, float]:
    """Simulate (not timed), then stream the in-memory JSON batches through the real flow."""
    sim = simulate(SimConfig(users=users, days=days, seed=seed))
    events = sim.events
    if user_slice is not None:  # this process's share of the users (disjoint across processes)
        k, of = user_slice
        keys = hash_strings(events["user_id"].to_numpy().astype(object)).view(np.uint64)
        events = events.filter(pl.Series(keys % np.uint64(of) == np.uint64(k)))
    batches = list(iter_ndjson_batches(events, 50_000))
    tmp = Path(tempfile.mkdtemp(prefix="lifecycle-core-"))
    try:
        s = _settings(tmp, **settings)
        src = IteratorSource("bench", lambda: iter(batches))
        store = open_migrated_store(s)
        res = run_pipeline(s, registry=CollectorRegistry(), store=store, serve_metrics=False, source=src)
        store.close()
        return {"events": res.events_in, "seconds": res.seconds, "users": events["user_id"].n_unique()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _proc(q: mp.Queue, users: int, days: int, k: int) -> None:  # type: ignore[type-arg]
    q.put(_core_run(users, days, 7, (k, 2)))


def bench_core(users: int, days: int) -> float:
    r = _core_run(users, days, 7, None)
    rate = r["events"] / r["seconds"]
    emit(
        "core_events_per_s",
        rate,
        "events/s",
        events=int(r["events"]),
        users=int(r["users"]),
        days=days,
        processes=1,
        batch=50_000,
        shards=4,
        device="cpu",
        store="chdb",
    )
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_proc, args=(q, users, days, k)) for k in range(2)]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    total = sum(x["events"] for x in results)
    # both run at once; the slower one bounds the aggregate
    emit(
        "core_2proc_events_per_s",
        total / max(x["seconds"] for x in results),
        "events/s",
        events=int(total),
        processes=2,
        note="disjoint user halves, one chDB store per process",
    )
    return rate


def bench_snapshot(n_users: int) -> None:
    """What one Bytewax epoch snapshot of a shard costs (pickle of the copied arrays) and a resume."""
    import pickle

    from pipelines.core.shard import ShardConfig, ShardProcessor

    proc = ShardProcessor(ShardConfig())
    step = 250_000
    for lo in range(0, n_users, step):
        ids = np.array([f"u{i:08d}" for i in range(lo, min(n_users, lo + step))], dtype=object)
        n = ids.shape[0]
        proc.process(
            EventColumns(
                user_key=hash_strings(ids),
                user_id=ids,
                event_key=np.arange(lo, lo + n, dtype=np.int64),
                ts_ms=1_790_000_000_000 + np.arange(n, dtype=np.int64),
                type_code=np.full(n, TYPE_CODE["order"], np.int8),
                channel_code=np.zeros(n, np.int8),
                amount=np.full(n, 10.0),
                offsets=np.arange(lo, lo + n, dtype=np.int64),
                payload_idx=np.zeros(n, np.int64),
            )
        )
    proc.flush()  # every event applied (a snapshot holds state, not events waiting for their tick)
    assert proc.state.n == n_users and proc.held_events() == 0
    t = time.perf_counter()
    blob = pickle.dumps(proc.snapshot(), protocol=pickle.HIGHEST_PROTOCOL)
    snap_s = time.perf_counter() - t
    t = time.perf_counter()
    ShardProcessor.restore(ShardConfig(), pickle.loads(blob))
    resume_s = time.perf_counter() - t
    emit("snapshot_seconds", snap_s, "s", users=n_users, bytes=len(blob), note="one shard, full state, pickled")
    emit("resume_seconds", resume_s, "s", users=n_users, note="unpickle + rebuild the hash index")


def bench_state_bytes(n_users: int) -> None:
    st = ShardState(capacity=1024)
    step = 500_000
    for lo in range(0, n_users, step):
        hi = min(n_users, lo + step)
        ids = np.array([f"u{i:08d}" for i in range(lo, hi)], dtype=object)
        n = ids.shape[0]
        st.apply(
            EventColumns(
                user_key=hash_strings(ids),
                user_id=ids,
                event_key=np.arange(lo, hi, dtype=np.int64),
                ts_ms=1_790_000_000_000 + np.arange(n, dtype=np.int64),
                type_code=np.full(n, TYPE_CODE["page_view"], np.int8),
                channel_code=np.zeros(n, np.int8),
                amount=np.zeros(n),
            )
        )
    ledger = ActionLedger(default_playbook().action_names, default_playbook().rule_ids())
    ledger.ensure(st.n)  # the default playbook's per-user action history (6 actions)
    arrays_per_row = (st.nbytes() + ledger.nbytes()) / st.n  # allocated arrays per live user: slack included
    index = st._index.sizeof() / st.n
    ids = sum(sys.getsizeof(x) for x in st.user_id[: st.n]) / st.n
    emit(
        "state_bytes_per_user",
        arrays_per_row + index + ids,
        "bytes",
        users=st.n,
        arrays=round(arrays_per_row, 1),
        action_ledger=round(ledger.nbytes() / st.n, 1),
        index=round(index, 1),
        id_strings=round(ids, 1),
        note="numpy arrays per live user (growth slack included; shard state + playbook ledger) + hash index + "
        "Python id strings",
    )


class _PacedPartition(StatefulSourcePartition[RawBatch, None]):
    """Emits the simulator's events re-stamped with the wall clock, at a fixed rate."""

    def __init__(self, events: pl.DataFrame, rate: float, seconds: float, batch: int) -> None:
        self._events = events
        self._rate = rate
        self._batch = batch
        self._end = time.time() + seconds
        self._next = time.time()
        self._pos = 0

    def next_batch(self) -> list[RawBatch]:
        now = time.time()
        if now >= self._end:
            raise StopIteration()
        if now < self._next:
            return []
        chunk = self._events.slice(self._pos % (self._events.height - self._batch), self._batch)
        self._pos += self._batch
        now_ms = int(now * 1000)
        chunk = chunk.with_columns(
            pl.lit(now_ms, dtype=pl.Int64).alias("ts"), (pl.col("event_id") + pl.lit(f"-{self._pos}")).alias("event_id")
        )
        lines = to_ndjson_bytes(chunk).splitlines()
        self._next += self._batch / self._rate
        return [RawBatch("paced", 0, np.arange(len(lines), dtype=np.int64), lines, now_ms)]

    def next_awake(self) -> datetime | None:
        return datetime.fromtimestamp(self._next, UTC)

    def snapshot(self) -> None:
        return None


class _PacedSource(FixedPartitionedSource[RawBatch, None]):
    def __init__(self, events: pl.DataFrame, rate: float, seconds: float, batch: int) -> None:
        self._args = (events, rate, seconds, batch)

    def list_parts(self) -> list[str]:
        return ["paced"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _PacedPartition:
        return _PacedPartition(*self._args)


class _TimedStore(ChdbStore):
    """Records, per written score row, the wall time of the committed insert minus its event time."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.latencies: list[np.ndarray] = []

    def insert(self, table: str, data: pa.Table) -> None:
        super().insert(table, data)
        if table == "user_scores":
            done = time.time()
            ev = data.column("last_event_at").cast(pa.int64()).to_numpy()
            self.latencies.append(done - ev / 1000)


def bench_latency(max_rate: float, seconds: float) -> None:
    rate = max_rate / 2
    sim = simulate(SimConfig(users=200_000, days=10, seed=5))
    tmp = Path(tempfile.mkdtemp(prefix="lifecycle-latency-"))
    try:
        batch = max(500, int(rate / 10))  # ~10 batches per second
        s = _settings(tmp, score_interval_seconds=1.0, batch_events=batch)
        store = _TimedStore(tmp / "store.chdb")
        migrate(store, s.sql_dir)
        res = run_pipeline(
            s,
            registry=CollectorRegistry(),
            store=store,
            serve_metrics=False,
            source=_PacedSource(sim.events, rate, seconds, batch),
        )
        lat = np.concatenate(store.latencies) if store.latencies else np.zeros(1)
        store.close()
        emit(
            "score_latency_p99_s",
            float(np.quantile(lat, 0.99)),
            "s",
            p50=round(float(np.quantile(lat, 0.5)), 3),
            load_events_per_s=round(rate),
            events=res.events_in,
            rows=int(lat.shape[0]),
            note="event time (stamped at production) to user_scores insert committed",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    users = int(os.environ.get("BENCH_CORE_USERS", "1000000"))
    days = int(os.environ.get("BENCH_CORE_DAYS", "10"))
    seconds = float(os.environ.get("BENCH_LATENCY_SECONDS", "20"))
    for n in (1_000_000, 5_000_000):
        bench_state_bytes(n)
    bench_snapshot(1_000_000)
    max_rate = bench_core(users, days)
    bench_latency(max_rate, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
