"""Sink throughput: ``user_scores`` rows per second into chDB (embedded) and over HTTP (clickhouse-connect).

Blocks are shaped like the pipeline's (the Arrow types of ``pipelines/core/rows.py``)
at the sizes the flow produces per insert (``BENCH_SINK_BLOCKS``, default
20000 and 200000 rows), into a freshly migrated store, so every insert also
feeds the ``score_history`` materialized view as in production. The HTTP figure
goes through :class:`pipelines.io.store.http.HttpStore` (content hash, deduplication
token, Arrow stream) to chDB served behind ClickHouse's HTTP interface on
loopback. ``sink_chdb_no_history_rows_per_s`` is the same without the view
(user_scores alone). Each figure is the median of ``BENCH_SINK_REPEATS`` runs
(``best_rows_per_s`` the fastest). Prints JSON lines; run ``python -m bench.sink``.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.io.store.base import Store
from pipelines.io.store.chdb import ChdbStore
from pipelines.io.store.http import HttpStore
from pipelines.io.store.migrations import migrate
from pipelines.settings import DEFAULT_SQL
from tests.support.chdb_http import ChdbHttpServer

_TS = pa.timestamp("ms", tz="UTC")
_STAGES = np.array(["new", "growing", "mature", "dormant", "churned"], dtype=object)
_TIERS = np.array(["vip", "regular", "potential"], dtype=object)
_ACTIONS = np.array(["none", "welcome_coupon", "nurture_content", "reactivation_1v1"], dtype=object)
_RULES = np.array(["", "welcome-new", "nurture-growing", "reactivate-dormant"], dtype=object)
_REASONS = [[], ["no activity for 21 days"], ["no activity for 21 days", "coupon use fell (10% redeemed)"]]


def emit(name: str, value: float, unit: str, **extra: object) -> None:
    print(json.dumps({"name": name, "value": round(value, 3), "unit": unit, **extra}), flush=True)


def score_block(start: int, n: int, version: int, rng: np.random.Generator) -> pa.Table:
    """``n`` user_scores rows for users ``start .. start+n``, as records.score_records builds them."""
    ids = np.char.add("user-", np.arange(start, start + n).astype(str)).astype(object)
    ms = np.full(n, version, np.int64)
    acted = rng.integers(0, 4, n)  # 0: no action yet
    return pa.table(
        {
            "user_id": pa.array(ids, pa.string()),
            "stage": pa.array(_STAGES[rng.integers(0, 5, n)], pa.string()),
            "tier": pa.array(_TIERS[rng.integers(0, 3, n)], pa.string()),
            "at_risk": pa.array(rng.random(n) < 0.2, pa.bool_()),
            "churn_risk": pa.array(rng.random(n, dtype=np.float32), pa.float32()),
            "purchase_propensity": pa.array(rng.random(n, dtype=np.float32), pa.float32()),
            "reasons": pa.array([_REASONS[i] for i in rng.integers(0, 3, n)], pa.list_(pa.string())),
            "model_version": pa.array(np.full(n, "lsm-default-1", object), pa.string()),
            "last_event_at": pa.array(ms - rng.integers(0, 86_400_000, n), _TS),
            "scored_at": pa.array(ms, _TS),
            "version": pa.array(ms.astype(np.uint64), pa.uint64()),
            "taxonomy": pa.array(np.full(n, "lifecycle-5", object), pa.string()),
            "taxonomy_version": pa.array(np.ones(n, np.uint32), pa.uint32()),
            "playbook": pa.array(np.full(n, "lifecycle-5-default", object), pa.string()),
            "playbook_version": pa.array(np.ones(n, np.uint32), pa.uint32()),
            "action": pa.array(_ACTIONS[acted], pa.string()),
            "action_rule": pa.array(_RULES[acted], pa.string()),
            "action_at": pa.array(ms - rng.integers(0, 7 * 86_400_000, n), _TS, mask=acted == 0),
        }
    )


def measure(open_store: Callable[[], Store], blocks: list[pa.Table], *, history: bool = True) -> float:
    """Seconds to insert ``blocks`` one insert each into a freshly migrated store (rows checked after).

    ``history=False`` drops the score_history view first: the cost of user_scores alone.
    """
    store = open_store()
    try:
        migrate(store, DEFAULT_SQL)
        if not history:
            store.command("DROP VIEW score_history_mv")
        t0 = time.perf_counter()
        for b in blocks:
            store.insert("user_scores", b)
        secs = time.perf_counter() - t0
        n = store.query("SELECT count() AS n FROM user_scores").column("n")[0].as_py()
        if n != sum(b.num_rows for b in blocks):
            raise RuntimeError(f"wrote {n} rows, expected {sum(b.num_rows for b in blocks)}")
    finally:
        store.close()
    return secs


def main() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_SINK_BLOCKS", "20000,200000").split(",")]
    total = int(os.environ.get("BENCH_SINK_ROWS", "1000000"))
    repeats = int(os.environ.get("BENCH_SINK_REPEATS", "3"))
    version = int(time.time() * 1000)  # recent event time: score_history's TTL keeps the rows
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory(prefix="bench-sink-") as tmp:
        for size in sizes:
            inserts = max(1, total // size)
            blocks = [score_block(i * size, size, version, rng) for i in range(inserts)]
            rows = inserts * size
            variants = (
                ("sink_chdb_rows_per_s", "chdb", True),
                ("sink_chdb_no_history_rows_per_s", "chdb", False),
                ("sink_http_rows_per_s", "http", True),
            )
            for name, kind, history in variants:
                runs = []
                for r in range(repeats):
                    path = Path(tmp) / f"{name}-{size}-{r}"
                    if kind == "chdb":
                        runs.append(measure(partial(ChdbStore, path), blocks, history=history))
                    else:
                        with ChdbHttpServer(path) as srv:
                            runs.append(measure(partial(HttpStore, srv.url), blocks))
                secs = statistics.median(runs)
                emit(
                    name,
                    rows / secs,
                    "rows/s",
                    rows_per_insert=size,
                    inserts=inserts,
                    rows=rows,
                    seconds=round(secs, 3),
                    best_rows_per_s=round(rows / min(runs)),
                    repeats=repeats,
                    score_history_view=history,
                    cpus=os.cpu_count(),
                )


if __name__ == "__main__":
    main()
