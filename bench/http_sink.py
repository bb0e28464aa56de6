"""Insert throughput of HttpStore (clickhouse-connect over HTTP) into chDB served by the test HTTP server.

Inserts ``--rows`` ``user_scores``-shaped rows through :meth:`HttpStore.insert`
in ``--block``-row blocks and prints rows/s; for comparison, the same blocks
through the embedded :class:`ChdbStore`. Run: ``python -m bench.http_sink``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
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


def score_table(n: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = np.char.add("u", np.arange(n).astype(str)).astype(object)
    reasons_pool = pa.array([[], ["silent_7d"], ["silent_7d", "no_order_30d"], ["vip_spend"]], pa.list_(pa.string()))
    ms = 1_760_000_000_000 + rng.integers(0, 10 * 86_400_000, n)
    return pa.table(
        {
            "user_id": pa.array(ids, pa.string()),
            "stage": pa.array(np.array(["new", "growing", "mature", "dormant", "churned"])[rng.integers(0, 5, n)]),
            "tier": pa.array(np.array(["vip", "regular", "potential"])[rng.integers(0, 3, n)]),
            "at_risk": pa.array(rng.random(n) < 0.2),
            "churn_risk": pa.array(rng.random(n, dtype=np.float32)),
            "purchase_propensity": pa.array(rng.random(n, dtype=np.float32)),
            "reasons": reasons_pool.take(pa.array(rng.integers(0, 4, n))),
            "model_version": pa.array(["lsm-default-1"] * n, pa.string()),
            "last_event_at": pa.array(ms, _TS),
            "scored_at": pa.array(ms + 1000, _TS),
            "version": pa.array(ms.astype(np.uint64)),
        }
    )


def run(store: Store, blocks: list[pa.Table]) -> float:
    migrate(store, DEFAULT_SQL)
    t0 = time.perf_counter()
    for b in blocks:
        store.insert("user_scores", b)
    elapsed = time.perf_counter() - t0
    n = store.query("SELECT count() AS n FROM user_scores").column("n").to_pylist()[0]
    assert n == sum(b.num_rows for b in blocks), n
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--block", type=int, default=100_000)
    args = ap.parse_args()
    table = score_table(args.rows)
    blocks = [table.slice(i, args.block) for i in range(0, args.rows, args.block)]
    with tempfile.TemporaryDirectory() as tmp:
        with ChdbHttpServer(Path(tmp) / "http") as srv:
            store = HttpStore(srv.url)
            try:
                secs = run(store, blocks)
            finally:
                store.close()
        print(
            f"HttpStore -> chDB over HTTP: {args.rows:,} rows in {len(blocks)} blocks, "
            f"{secs:.2f} s, {args.rows / secs:,.0f} rows/s"
        )
        embedded = ChdbStore(Path(tmp) / "embedded")
        try:
            secs = run(embedded, blocks)
        finally:
            embedded.close()
        print(
            f"ChdbStore (embedded):        {args.rows:,} rows in {len(blocks)} blocks, "
            f"{secs:.2f} s, {args.rows / secs:,.0f} rows/s"
        )


if __name__ == "__main__":
    main()
