"""``python -m bench.event_time``: what the event-time refresh buys and costs, as JSON lines.

1. Freshness against batch scoring, on a simulated history (default 3,000 users, 60 days), through the
   real dataflow in process: stored at-risk users vs ``lifecycle score`` at the stream's final clock,
   the median |stored - batch| churn risk of active-stage users silent 3+ days, and whether
   ``stage_transitions`` are identical under batch sizes 100, 700 and 20,000.
2. The refresh's cost: (a) a live stream's silent day at BENCH_ET_LIVE_USERS (1,000,000) live users,
   every one refreshed once: rows re-scored per second of wall time; (b) the state + scoring path over
   a BENCH_ET_COST_DAYS (30) replay of BENCH_ET_COST_USERS (200,000) users with the daily refresh on
   and off (rows re-scored per event and per second, events/s, cores used); (c) its effect on
   ``core_events_per_s`` (the whole flow into chDB, bench.core's run) at BENCH_ET_CORE_USERS (300,000)
   users over BENCH_ET_CORE_DAYS (10). Sizes BENCH_ET_USERS (3000) and BENCH_ET_DAYS (60) set part 1;
   a size of 0 skips that part.
"""

from __future__ import annotations

import json
import os
import resource
import time

import numpy as np
import polars as pl
import pyarrow as pa
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import CollectorRegistry

from pipelines.contract.decode import decode_batch
from pipelines.contract.events import RawBatch
from pipelines.contract.time import DAY_MS
from pipelines.core.rows import Records
from pipelines.core.shard import ShardConfig, ShardProcessor
from pipelines.flow.dataflow import FlowConfig, ScoreStep, build_flow, split_by_shard
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.offline.history import load_history
from pipelines.offline.score import score_as_of
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import iter_ndjson_batches, write_jsonl
from pipelines.scoring.scorer import DEFAULT_MODEL_DIR, Scorer

ACTIVE = ("new", "growing", "mature")


def emit(name: str, value: float, unit: str, **extra: object) -> None:
    print(json.dumps({"name": name, "value": round(value, 4), "unit": unit, **extra}), flush=True)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _flow_rows(lines: list[bytes], batch: int, scorer: Scorer) -> list[Records]:
    batches = [
        RawBatch("bench", 0, np.arange(i, i + len(lines[i : i + batch]), dtype=np.int64), lines[i : i + batch])
        for i in range(0, len(lines), batch)
    ]
    out: list[tuple[str, Records]] = []
    flow = build_flow(
        TestingSource(batches),
        sink=TestingSink(out),
        scorer=scorer,
        metrics=PipelineMetrics(CollectorRegistry()),
        cfg=FlowConfig(shards=4, shard=ShardConfig(streams=("bench:0",))),
        source_kind="memory",
        clock=lambda: 1_800_000_000.0,
    )
    run_main(flow)
    return [r for _, r in out]


def _final(records: list[Records], table: str, key: list[str]) -> pl.DataFrame:
    df = pl.from_arrow(pa.concat_tables([r.data for r in records if r.table == table]))
    assert isinstance(df, pl.DataFrame)
    df = df.with_row_index("_i").sort(["version", "_i"]).group_by(key, maintain_order=True).last()
    return df.drop(["_i", *[c for c in ("scored_at",) if c in df.columns]]).sort(key)


def freshness(users: int, days: int) -> None:
    sim = simulate(SimConfig(users=users, days=days, seed=31))
    lines = [ln for b in iter_ndjson_batches(sim.events, 100_000) for ln in b]
    scorer = Scorer.from_dir(DEFAULT_MODEL_DIR, device="cpu")
    transitions = {}
    stored = None
    for batch in (100, 700, 20_000):
        t = time.perf_counter()
        recs = _flow_rows(lines, batch, scorer)
        emit("event_time_flow_seconds", time.perf_counter() - t, "s", batch=batch, events=len(lines))
        transitions[batch] = _final(recs, "stage_transitions", ["user_id", "to_stage", "at"])
        if batch == 20_000:
            stored = _final(recs, "user_scores", ["user_id"])
    assert stored is not None
    same = all(transitions[b].equals(transitions[20_000]) for b in (100, 700))
    emit(
        "transitions_identical_across_batch_sizes",
        float(same),
        "bool",
        batches=[100, 700, 20_000],
        rows={b: transitions[b].height for b in transitions},
    )
    clock = int(stored["version"].max())
    path = os.environ.get("TMPDIR", "/tmp") + "/bench-event-time.jsonl"
    write_jsonl(sim.events, __import__("pathlib").Path(path))
    hist = load_history([__import__("pathlib").Path(path)]).events
    batch = pl.from_arrow(score_as_of(hist, cutoff_ms=clock, scorer=scorer))
    assert isinstance(batch, pl.DataFrame)
    emit(
        "at_risk_stored_vs_batch",
        float(stored["at_risk"].sum()),
        "users",
        batch_at_risk=int(batch["at_risk"].sum()),
        users=users,
        days=days,
        clock_ms=clock,
    )
    both = stored.join(batch, on="user_id", suffix="_batch")
    silent = both.filter(
        pl.col("stage_batch").is_in(ACTIVE) & ((clock - pl.col("last_event_at_batch").dt.epoch("ms")) >= 3 * DAY_MS)
    )
    diff = (silent["churn_risk"] - silent["churn_risk_batch"]).abs()
    emit(
        "median_abs_risk_gap_active_silent_3d",
        float(diff.median() or 0.0),
        "probability",
        users=silent.height,
        p90=float(diff.quantile(0.9) or 0.0),
        stored_age_days_max=float(((clock - silent["version"]) / DAY_MS).max() or 0.0),
    )


def _step(cfg: ShardConfig, scorer: Scorer) -> ScoreStep:
    return ScoreStep(scorer, cfg, PipelineMetrics(CollectorRegistry()), lambda: 1_800_000_000.0)


def live_refresh(users: int, shards: int = 4) -> None:
    """A live stream's day at ``users`` live users, all silent: every one is refreshed once, and how fast.

    Each user has one event on day 0; then only the clock moves (hour by hour, as a live stream's
    idle advance does), so everything evaluated on day 1 is the refresh (with the at-risk watch).
    ``refresh_rows_per_s`` is the capacity; a one-day interval needs ``users / 86,400`` rows/s.
    """
    from pipelines.contract.events import TYPE_CODE, EventColumns
    from pipelines.contract.ids import hash_strings

    scorer = Scorer.from_dir(DEFAULT_MODEL_DIR, device="cpu")
    cfg = ShardConfig()
    step = _step(cfg, scorer)
    procs = [ShardProcessor(cfg, probe=scorer.score_probs) for _ in range(shards)]
    t0 = 1_790_000_000_000
    for lo in range(0, users, 250_000):
        ids = np.array([f"u{i:08d}" for i in range(lo, min(users, lo + 250_000))], dtype=object)
        n = ids.shape[0]
        keys = hash_strings(ids)
        ts = t0 + (np.arange(lo, lo + n, dtype=np.int64) * DAY_MS) // users  # day 0, in time order
        ev = EventColumns(
            user_key=keys,
            user_id=ids,
            event_key=np.arange(lo, lo + n, dtype=np.int64),
            ts_ms=ts,
            type_code=np.full(n, TYPE_CODE["page_view"], np.int8),
            channel_code=np.zeros(n, np.int8),
            amount=np.zeros(n),
            offsets=np.arange(lo, lo + n, dtype=np.int64),
            payload_idx=np.zeros(n, np.int64),
        )
        sh = (keys.view(np.uint64) % np.uint64(shards)).astype(np.int64)
        for k, proc in enumerate(procs):
            proc.process(ev.take(np.flatnonzero(sh == k)))
    for k, proc in enumerate(procs):  # day 0 evaluated (the events' own rows), not timed
        step(proc.advance(t0 + DAY_MS), proc, k, shards)
    refreshed = rows = 0
    t, c = time.perf_counter(), _cpu()
    for hour in range(1, 25):
        for k, proc in enumerate(procs):
            res = proc.advance(t0 + DAY_MS + hour * 3_600_000)
            refreshed += res.refresh_rows
            rows += sum(len(r) for r in res.rows)
            step(res, proc, k, shards)
    wall, cpu = time.perf_counter() - t, _cpu() - c
    emit(
        "live_refresh_rows_per_s",
        refreshed / wall,
        "rows/s",
        users=users,
        refresh_rows=refreshed,
        rows_written=rows,
        seconds=round(wall, 2),
        needed_rows_per_s=round(users / 86_400, 1),
        cores=round(cpu / wall, 2),
        path="features + at-risk watch + scoring + label step (no store)",
    )


def replay_cost(users: int, days: int) -> None:
    """The state + scoring path over a replay with the daily refresh on and off: rows re-scored, events/s."""
    sim = simulate(SimConfig(users=users, days=days, seed=32))
    decoded = [
        decode_batch(RawBatch("b", 0, np.arange(len(b)), b), now_ms=4_000_000_000_000)
        for b in iter_ndjson_batches(sim.events, 20_000)
    ]
    del sim
    n = sum(len(d.events) for d in decoded)
    scorer = Scorer.from_dir(DEFAULT_MODEL_DIR, device="cpu")
    for label, refresh_ms in (("refresh_daily", DAY_MS), ("refresh_off", 10_000 * DAY_MS)):
        cfg = ShardConfig(refresh_ms=refresh_ms, refresh_churned_ms=max(refresh_ms, 7 * DAY_MS))
        step = _step(cfg, scorer)
        procs: dict[str, ShardProcessor] = {}
        rows = refreshed = 0
        t, c = time.perf_counter(), _cpu()
        for d in decoded:
            for key, (_, sl) in split_by_shard(d, 4):
                proc = procs.setdefault(key, ShardProcessor(cfg, probe=scorer.score_probs))
                res = proc.process(sl)
                rows += sum(len(r) for r in res.rows)
                refreshed += res.refresh_rows
                step(res, proc, int(key[1:]), 4)
        wall, cpu = time.perf_counter() - t, _cpu() - c
        emit(
            "state_score_label_events_per_s",
            n / wall,
            "events/s",
            mode=label,
            users=users,
            days=days,
            events=n,
            rows_per_event=round(rows / n, 3),
            refresh_rows=refreshed,
            refresh_rows_per_s=round(refreshed / wall),
            cores=round(cpu / wall, 2),
        )


def core_effect(users: int, days: int) -> None:
    """``core_events_per_s`` (bench.core: the whole flow into chDB) with the daily refresh and with it off."""
    import bench.core as core

    rates = {}
    off = {"refresh_seconds": 1e9, "refresh_churned_seconds": 1e9}
    for label, over in (("refresh_daily", {}), ("refresh_off", off)):
        r = core._core_run(users, days, 7, None, **over)
        rates[label] = r["events"] / r["seconds"]
        emit("core_events_per_s", rates[label], "events/s", mode=label, users=users, days=days, events=r["events"])
    emit(
        "refresh_effect_on_core_events_per_s",
        100 * (rates["refresh_daily"] / rates["refresh_off"] - 1),
        "%",
        users=users,
        days=days,
        goal="above -5",
    )


def main() -> int:
    import torch

    torch.set_num_threads(1)  # as the pipeline runs (LIFECYCLE_TORCH_THREADS=1): two threads thrash on 2 cores
    users = int(os.environ.get("BENCH_ET_USERS", "3000"))
    if users:  # 0 skips a part
        freshness(users, int(os.environ.get("BENCH_ET_DAYS", "60")))
    live = int(os.environ.get("BENCH_ET_LIVE_USERS", "1000000"))
    if live:
        live_refresh(live)
    cost_users = int(os.environ.get("BENCH_ET_COST_USERS", "200000"))
    if cost_users:
        replay_cost(cost_users, int(os.environ.get("BENCH_ET_COST_DAYS", "30")))
    core_users = int(os.environ.get("BENCH_ET_CORE_USERS", "300000"))
    if core_users:
        core_effect(core_users, int(os.environ.get("BENCH_ET_CORE_DAYS", "10")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
