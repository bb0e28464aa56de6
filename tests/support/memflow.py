"""The real dataflow in process (bytewax's TestingSource/TestingSink), and FINAL tables computed from its rows.

For property tests that run the flow many times: no engine, the rows exactly as the store sink would get
them. ``final_tables`` applies the tables' own rules: ``user_scores`` keeps, per user, the row of the
highest ``version`` (the later insert on a tie, as a ReplacingMergeTree does), ``stage_transitions``
keeps one row per (user, at).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import polars as pl
import pyarrow as pa
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import CollectorRegistry

from pipelines.contract.events import RawBatch
from pipelines.core.rows import Records
from pipelines.core.shard import ShardConfig
from pipelines.flow.dataflow import FlowConfig, build_flow
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.offline.simulate_io import iter_ndjson_batches
from pipelines.scoring.scorer import DEFAULT_MODEL_DIR, Scorer

WALL = 1_800_000_000.0  # a fixed wall clock: scored_at is then a function of nothing


@lru_cache(maxsize=1)
def scorer() -> Scorer:
    import torch

    torch.set_num_threads(1)  # as the pipeline runs (LIFECYCLE_TORCH_THREADS=1)
    return Scorer.from_dir(DEFAULT_MODEL_DIR, device="cpu")


def lines_of(events: pl.DataFrame) -> list[bytes]:
    """The NDJSON lines of simulated events, in time order."""
    return [line for batch in iter_ndjson_batches(events, 100_000) for line in batch]


def stream_batches(
    lines: Sequence[bytes], cuts: Sequence[int], *, source: str = "mem", partition: int = 0
) -> list[RawBatch]:
    """``lines`` of one stream cut into batches of the given sizes (cycled), offsets = positions."""
    out, i, k = [], 0, 0
    while i < len(lines):
        n = max(1, cuts[k % len(cuts)])
        chunk = list(lines[i : i + n])
        out.append(RawBatch(source, partition, np.arange(i, i + len(chunk), dtype=np.int64), chunk, 0))
        i += len(chunk)
        k += 1
    return out


def run(batches: Sequence[RawBatch], *, shard: ShardConfig, shards: int = 2) -> list[Records]:
    written: list[tuple[str, Records]] = []
    flow = build_flow(
        TestingSource(list(batches)),
        sink=TestingSink(written),
        scorer=scorer(),
        metrics=PipelineMetrics(CollectorRegistry()),
        cfg=FlowConfig(shards=shards, shard=shard),
        source_kind="memory",
        clock=lambda: WALL,
    )
    run_main(flow)
    return [r for _, r in written]


def final_tables(records: Sequence[Records]) -> dict[str, pl.DataFrame]:
    """``user_scores`` and ``stage_transitions`` as FINAL would read them (wall-clock columns dropped)."""
    out: dict[str, pl.DataFrame] = {}
    for table, key, order in (("user_scores", ["user_id"], "version"), ("stage_transitions", ["user_id", "at"], None)):
        parts = [r.data for r in records if r.table == table]
        if not parts:
            out[table] = pl.DataFrame()
            continue
        df = pl.from_arrow(pa.concat_tables(parts))
        assert isinstance(df, pl.DataFrame)
        df = df.with_row_index("_insert")
        if order is not None:
            df = df.sort([order, "_insert"]).group_by(key, maintain_order=True).last()
        else:
            df = df.sort("_insert").group_by(key, maintain_order=True).last()
        out[table] = df.drop([c for c in ("_insert", "scored_at") if c in df.columns]).sort(key)
    return out
