"""Future-dated events (accepted up to LIFECYCLE_MAX_FUTURE_SECONDS ahead) cannot drag the event clock ahead.

Before the cap, eight events dated 20 hours ahead moved their stream's clock there, and every genuine event
after them was rejected as late (lateness is 6 h); they could also rotate the duplicate-detection memory.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipelines.core.shard import ShardConfig
from tests.support.events import line
from tests.support.memflow import WALL, final_tables, run, stream_batches

NOW_MS = int(WALL * 1000)
HOUR = 3_600_000


def _lines() -> list[bytes]:
    early = [line(event_id=f"g{i}", user_id=f"g{i}", ts=NOW_MS - HOUR + i) for i in range(20)]
    attack = [line(event_id=f"f{i}", user_id=f"f{i}", ts=NOW_MS + 20 * HOUR) for i in range(8)]
    late = [line(event_id=f"h{i}", user_id=f"h{i}", ts=NOW_MS + 60_000 + i) for i in range(50)]
    again = [line(event_id="g0", user_id="g0", ts=NOW_MS - HOUR)]  # a producer retry of the first event
    return early + attack + late + again


def test_a_future_dated_flood_leaves_every_genuine_event_applied() -> None:
    records = run(stream_batches(_lines(), [10]), shard=ShardConfig(streams=("mem:0",)))
    rejected = [r for r in records if r.table == "rejected_events"]
    assert not rejected, pl.from_arrow(rejected[0].data)
    scores = final_tables(records)["user_scores"]
    users = set(scores["user_id"].to_list())
    assert {f"h{i}" for i in range(50)} <= users and {f"g{i}" for i in range(20)} <= users
    assert {f"f{i}" for i in range(8)} <= users  # the future-dated events are applied too, at the capped clock


def test_no_score_is_versioned_ahead_of_the_wall_clock_plus_the_skew() -> None:
    records = run(stream_batches(_lines(), [10]), shard=ShardConfig(streams=("mem:0",)))
    scores = final_tables(records)["user_scores"]
    assert int(scores["version"].max()) <= NOW_MS + 300_000 + HOUR  # the tick holding now + skew, at most
    last = scores.filter(pl.col("user_id").str.starts_with("f"))["last_event_at"].dt.epoch("ms").to_numpy()
    assert (last <= NOW_MS + 300_000 + HOUR).all() and np.unique(last).shape[0] == 1


def test_a_retry_after_future_dated_events_is_still_recognised_as_a_duplicate() -> None:
    from bytewax.testing import TestingSink, TestingSource, run_main
    from prometheus_client import CollectorRegistry

    from pipelines.flow.dataflow import FlowConfig, build_flow
    from pipelines.monitoring.metrics import PipelineMetrics
    from tests.support.memflow import scorer

    registry = CollectorRegistry()
    out: list = []
    flow = build_flow(
        TestingSource(stream_batches(_lines(), [10])),
        sink=TestingSink(out),
        scorer=scorer(),
        metrics=PipelineMetrics(registry),
        cfg=FlowConfig(shards=2, shard=ShardConfig(streams=("mem:0",))),
        source_kind="memory",
        clock=lambda: WALL,
    )
    run_main(flow)
    assert registry.get_sample_value("lifecycle_events_duplicate_total") == 1.0
