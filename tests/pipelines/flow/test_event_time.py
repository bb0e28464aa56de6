"""Results are a function of the events: batch sizes, partition splits and interleavings change nothing.

The real dataflow runs in process (no engine); ``final_tables`` reads its rows as FINAL would. One
simulated history is cut into random batches, split into one or two keyed partitions (as a producer
keyed by user id would), and the partitions' batches interleaved at random: ``user_scores``,
``stage_transitions`` and the playbook's grants must be identical every time.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.contract.events import RawBatch
from pipelines.contract.ids import hash_strings
from pipelines.contract.time import DAY_MS
from pipelines.core.shard import ShardConfig
from pipelines.offline.simulate import SimConfig, simulate
from tests.support.memflow import final_tables, lines_of, run, stream_batches

TICK_MS = 3_600_000


@lru_cache(maxsize=1)
def history() -> tuple[list[bytes], list[str]]:
    events = simulate(SimConfig(users=80, days=12, seed=21)).events
    return lines_of(events), events["user_id"].to_list()


def _config(partitions: int) -> ShardConfig:
    return ShardConfig(streams=tuple(f"mem:{p}" for p in range(partitions)))


def _partitioned(cuts: list[int], partitions: int, order: list[int]) -> list:  # noqa: ANN401
    lines, users = history()
    part = hash_strings(np.asarray(users, dtype=object)).view(np.uint64) % np.uint64(partitions)
    streams = [
        stream_batches([ln for ln, q in zip(lines, part, strict=True) if q == p], cuts, partition=p)
        for p in range(partitions)
    ]
    # interleave the partitions' batches in the order drawn (each partition keeps its own order)
    out, pos = [], [0] * partitions
    for k in order:
        p = k % partitions
        if pos[p] < len(streams[p]):
            out.append(streams[p][pos[p]])
            pos[p] += 1
    for p in range(partitions):
        out += streams[p][pos[p] :]
    return out


@lru_cache(maxsize=1)
def reference() -> dict[str, pl.DataFrame]:
    lines, _ = history()
    return final_tables(run(stream_batches(lines, [len(lines)]), shard=_config(1)))


def _same(got: dict[str, pl.DataFrame], want: dict[str, pl.DataFrame]) -> None:
    for table in ("user_scores", "stage_transitions"):
        assert got[table].height == want[table].height, table
        assert got[table].equals(want[table]), table


def test_the_reference_run_has_transitions_refreshes_and_actions() -> None:
    ref = reference()
    scores, transitions = ref["user_scores"], ref["stage_transitions"]
    assert scores.height == len(set(history()[1]))
    assert transitions.height > scores.height  # every user's first transition, and moves after it
    assert (transitions["from_stage"] == "none").sum() == scores.height  # one first transition per user
    assert scores["action"].is_in(["none"]).not_().any()  # the playbook granted something


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(min_value=7, max_value=700), min_size=1, max_size=6),
    partitions=st.sampled_from([1, 2]),
    order=st.lists(st.integers(min_value=0, max_value=1), min_size=0, max_size=40),
)
def test_random_batch_cuts_and_partition_splits_give_identical_final_tables(
    cuts: list[int], partitions: int, order: list[int]
) -> None:
    got = final_tables(run(_partitioned(cuts, partitions, order), shard=_config(partitions)))
    _same(got, reference())


def test_shard_count_does_not_change_results() -> None:
    lines, _ = history()
    got = final_tables(run(stream_batches(lines, [333]), shard=_config(1), shards=5))
    _same(got, reference())


def test_a_silent_users_risk_is_refreshed_every_day_without_events() -> None:
    lines, _ = history()
    records = run(stream_batches(lines, [500]), shard=_config(1))
    rows = pl.concat(
        [pl.from_arrow(r.data) for r in records if r.table == "user_scores"], how="vertical_relaxed"
    )
    assert isinstance(rows, pl.DataFrame)
    last = rows.sort("version").group_by("user_id").agg(pl.col("last_event_at").last(), pl.col("stage").last())
    newest = int(rows["version"].max())
    # users silent for the last 5+ days, not churned (those refresh weekly), still get one row per day
    silent = last.filter(
        (pl.col("last_event_at").dt.epoch("ms") < newest - 5 * DAY_MS) & (pl.col("stage") != "churned")
    )["user_id"].to_list()
    assert silent
    for uid in silent[:10]:
        versions = sorted(rows.filter(pl.col("user_id") == uid)["version"].to_list())
        tail = [v for v in versions if v > newest - 4 * DAY_MS]
        assert len(tail) >= 3, (uid, tail)
        gaps = np.diff(tail)
        assert (gaps <= DAY_MS + TICK_MS).all(), (uid, gaps)


def test_stream_rows_equal_lifecycle_score_as_of_during_silences_within_the_refresh_interval() -> None:
    from pipelines.contract.decode import DecodeLimits, decode_batch
    from pipelines.offline.score import score_as_of
    from tests.support.memflow import WALL, scorer

    lines, _ = history()
    records = run(stream_batches(lines, [400]), shard=_config(1))
    rows = pl.concat([pl.from_arrow(r.data) for r in records if r.table == "user_scores"], how="vertical_relaxed")
    assert isinstance(rows, pl.DataFrame)
    ev = decode_batch(
        RawBatch("h", 0, np.arange(len(lines), dtype=np.int64), lines),
        now_ms=4_000_000_000_000,
        limits=DecodeLimits(max_future_ms=10 * 365 * DAY_MS),
    ).events
    newest = int(rows["version"].max())
    for as_of in (newest - 6 * DAY_MS, newest - 3 * DAY_MS, newest - DAY_MS):
        latest = rows.filter(pl.col("version") <= as_of).sort("version").group_by("user_id").last()
        live = latest.filter(pl.col("stage") != "churned")
        # every live user's stored row is at most one refresh interval (plus a tick) old at any instant
        assert ((as_of - live["version"]) <= DAY_MS + TICK_MS).all()
        for version in sorted(set(live["version"].to_list()))[-3:]:  # the newest evaluation instants
            stream = live.filter(pl.col("version") == version).sort("user_id")
            batch = pl.from_arrow(score_as_of(ev, cutoff_ms=version, scorer=scorer(), clock=lambda: WALL))
            assert isinstance(batch, pl.DataFrame)
            batch = batch.filter(pl.col("user_id").is_in(stream["user_id"].to_list())).sort("user_id")
            assert batch["stage"].to_list() == stream["stage"].to_list()
            assert batch["tier"].to_list() == stream["tier"].to_list()
            assert batch["reasons"].to_list() == stream["reasons"].to_list()
            np.testing.assert_allclose(batch["churn_risk"].to_numpy(), stream["churn_risk"].to_numpy(), rtol=1e-5)


def test_a_silent_users_churn_risk_rises_from_refresh_to_refresh() -> None:
    lines, _ = history()
    records = run(stream_batches(lines, [500]), shard=_config(1))
    rows = pl.concat([pl.from_arrow(r.data) for r in records if r.table == "user_scores"], how="vertical_relaxed")
    assert isinstance(rows, pl.DataFrame)
    rising = total = 0
    for _, user in rows.sort("version").group_by("user_id"):
        last_event = user["last_event_at"].max()
        silent = user.filter((pl.col("last_event_at") == last_event) & pl.col("stage").is_in(["growing", "dormant"]))
        silent = silent.filter(pl.col("version") - pl.col("last_event_at").dt.epoch("ms") >= DAY_MS)
        if silent.height >= 3:
            total += 1
            rising += int(silent["churn_risk"][-1] > silent["churn_risk"][0])
    assert total >= 5 and rising >= 0.8 * total, (rising, total)


def test_at_the_streams_final_clock_the_store_says_what_lifecycle_score_says_for_every_user() -> None:
    """The end of input evaluates the open tick's due users too, and the at-risk watch keeps early warnings
    current between refreshes: stored stage, tier and at-risk flag equal a batch score at the final clock."""
    from pipelines.contract.decode import DecodeLimits, decode_batch
    from pipelines.offline.score import score_as_of
    from tests.support.memflow import WALL, scorer

    lines, _ = history()
    final = final_tables(run(stream_batches(lines, [450]), shard=_config(1)))["user_scores"].sort("user_id")
    clock = int(final["version"].max())
    ev = decode_batch(
        RawBatch("h", 0, np.arange(len(lines), dtype=np.int64), lines),
        now_ms=4_000_000_000_000,
        limits=DecodeLimits(max_future_ms=10 * 365 * DAY_MS),
    ).events
    batch = pl.from_arrow(score_as_of(ev, cutoff_ms=clock, scorer=scorer(), clock=lambda: WALL))
    assert isinstance(batch, pl.DataFrame)
    batch = batch.sort("user_id")
    assert final["user_id"].to_list() == batch["user_id"].to_list()
    assert final["at_risk"].sum() >= 3  # the history has early warnings to get right
    for col in ("stage", "at_risk"):
        assert final[col].to_list() == batch[col].to_list(), col
    live = (final["stage"] != "churned").to_numpy()  # churned users refresh weekly: their tier may lag a week
    assert np.asarray(final["tier"].to_list())[live].tolist() == np.asarray(batch["tier"].to_list())[live].tolist()
