"""``make bench``: performance figures as JSON lines ({"name", "value", "unit", ...}).

Figures, not assertions: targets are compared in the issue notes, never here.
Sizes are set by env vars so that a quick run (CI-sized) and a full run share
one script: BENCH_USERS (default 50000), BENCH_DAYS (default 30) for the pipeline figures,
BENCH_SIM_USERS (default 1000000, 30 days) for the simulator figure.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from pipelines.contract.decode import decode_batch
from pipelines.contract.events import RawBatch
from pipelines.core.shard import ShardConfig, ShardProcessor
from pipelines.flow.dataflow import split_by_shard
from pipelines.flow.runner import run_pipeline
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import iter_ndjson_batches
from pipelines.scoring.scorer import DEFAULT_MODEL_DIR, Scorer
from pipelines.settings import Settings


def emit(name: str, value: float, unit: str, **extra: object) -> None:
    print(json.dumps({"name": name, "value": round(value, 3), "unit": unit, **extra}), flush=True)


def main() -> int:
    users = int(os.environ.get("BENCH_USERS", "50000"))
    days = int(os.environ.get("BENCH_DAYS", "30"))
    torch.set_num_threads(1)

    sim_users = int(os.environ.get("BENCH_SIM_USERS", "1000000"))
    t = time.perf_counter()
    big = simulate(SimConfig(users=sim_users, days=30))
    dt = time.perf_counter() - t
    emit(
        "simulate_events_per_s",
        big.events.height / dt,
        "events/s",
        users=sim_users,
        days=30,
        events=big.events.height,
        seconds=round(dt, 2),
    )
    del big

    sim = simulate(SimConfig(users=users, days=days))
    n = sim.events.height

    t = time.perf_counter()
    batches = list(iter_ndjson_batches(sim.events, 20_000))
    emit("ndjson_serialise_events_per_s", n / (time.perf_counter() - t), "events/s", events=n)

    # stage by stage, outside Bytewax: where the time goes
    t = time.perf_counter()
    decoded = [decode_batch(RawBatch("b", 0, np.arange(len(b)), b), now_ms=4_000_000_000_000) for b in batches]
    emit("decode_events_per_s", n / (time.perf_counter() - t), "events/s", batch=20_000)

    procs: dict[str, ShardProcessor] = {}
    feats = []
    t = time.perf_counter()
    for d in decoded:
        for key, (_, sl) in split_by_shard(d, 4):
            res = procs.setdefault(key, ShardProcessor(ShardConfig())).process(sl)
            feats += [rows.features for rows in res.rows]
    emit("state_features_events_per_s", n / (time.perf_counter() - t), "events/s", shards=4)
    n_users = sum(p.state.n for p in procs.values())
    emit(
        "state_bytes_per_user",
        sum(p.state.nbytes() for p in procs.values()) / n_users,
        "bytes",
        users=n_users,
        note="arrays incl. growth slack, excl. hash index and id strings",
    )

    scorer = Scorer.from_dir(DEFAULT_MODEL_DIR, device="cpu")
    rows = sum(f.shape[0] for f in feats)
    t = time.perf_counter()
    for f in feats:
        scorer.score(f)
    emit(
        "score_with_reasons_rows_per_s", rows / (time.perf_counter() - t), "rows/s", device="cpu", threads=1, rows=rows
    )

    # the whole flow, as `lifecycle run --input simulate` runs it (simulation time excluded)
    tmp = Path(tempfile.mkdtemp(prefix="lifecycle-bench-"))
    try:
        s = Settings(input="simulate", sim_users=users, sim_days=days, store=f"chdb://{tmp}/store.chdb", metrics_port=0)
        res = run_pipeline(s, registry=CollectorRegistry(), serve_metrics=False)
        emit(
            "run_events_per_s",
            res.events_in / res.seconds,
            "events/s",
            events=res.events_in,
            users=users,
            days=days,
            shards=s.shards,
            rows_written=res.rows_written.get("user_scores", 0),
            store="chdb",
            device="cpu",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
