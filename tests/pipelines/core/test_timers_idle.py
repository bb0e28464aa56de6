import numpy as np
from prometheus_client import CollectorRegistry

from pipelines.core.shard import ShardConfig, ShardProcessor
from pipelines.core.timers import SilenceTimers
from pipelines.flow.dataflow import FlowConfig, ScoreStep, ShardLogic
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.scoring.scorer import Scorer
from pipelines.settings import DEFAULT_MODEL
from tests.support.events import T0, columns

H = 3_600_000
D = 24 * H


def test_timers_pop_only_the_rows_that_are_due() -> None:
    t = SilenceTimers((14 * D,), bucket_ms=H)
    rows = np.arange(100_000, dtype=np.int64)
    last = T0 + (rows % 1000) * H  # spread over ~42 days
    t.schedule(rows, last)
    clock = T0 + 14 * D + 10 * H
    due = t.pop_due(clock)
    due_at = last[due] + 14 * D
    assert (due_at <= clock).all()  # never early
    assert set(rows[last + 14 * D <= clock - H].tolist()) <= set(due.tolist())  # at most one bucket late
    assert t.pending() == 100_000 - due.shape[0]
    assert t.pop_due(clock).shape[0] == 0  # nothing twice


def test_timer_snapshot_round_trip_keeps_pending_timers() -> None:
    t = SilenceTimers((D,), bucket_ms=H)
    t.schedule(np.array([1, 2], np.int64), np.array([T0, T0 + 5 * H], np.int64))
    r = SilenceTimers.restore(t.snapshot())
    assert r.pop_due(T0 + D + H).tolist() == [1]
    assert r.pop_due(T0 + D + 6 * H).tolist() == [2]


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_an_idle_stream_advances_the_clock_by_wall_time_and_fires_silence() -> None:
    wall = _Clock(T0 / 1000)
    cfg = FlowConfig(shards=1, shard=ShardConfig(allowed_lateness_ms=H), idle_advance_seconds=30)
    metrics = PipelineMetrics(CollectorRegistry())
    score = ScoreStep(Scorer.from_dir(DEFAULT_MODEL, device="cpu"), cfg.shard, metrics, wall)
    logic = ShardLogic("s0", ShardProcessor(cfg.shard), score, metrics, cfg, wall)
    logic.on_item(("s0", columns([("quiet", T0, "page_view")]), T0))
    first = logic.notify_at()
    assert first is not None and first.timestamp() == T0 / 1000 + 30
    wall.t += 10  # not idle long enough yet
    assert logic.on_notify()[0] == []
    wall.t += 15 * 24 * 3600  # 15 days without a single event
    out, _ = logic.on_notify()
    assert len(out) == 1
    scores = {r.table: r.data.to_pylist() for r in out[0].records}
    assert [(r["user_id"], r["stage"]) for r in scores["user_scores"]] == [("quiet", "dormant")]
    assert [(r["from_stage"], r["to_stage"]) for r in scores["stage_transitions"]] == [("growing", "dormant")]


def test_idle_advance_is_off_by_default_for_replays() -> None:
    cfg = FlowConfig()
    metrics = PipelineMetrics(CollectorRegistry())
    score = ScoreStep(Scorer.from_dir(DEFAULT_MODEL, device="cpu"), cfg.shard, metrics, _Clock(0))
    logic = ShardLogic("s0", ShardProcessor(cfg.shard), score, metrics, cfg, _Clock(0))
    assert logic.notify_at() is None
