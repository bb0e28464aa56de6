import numpy as np
from prometheus_client import CollectorRegistry

from pipelines.contract.time import NEVER
from pipelines.core.shard import ShardConfig, ShardProcessor, Slice
from pipelines.core.timers import Timers
from pipelines.flow.dataflow import FlowConfig, ScoreStep, ShardLogic
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.scoring.scorer import Scorer
from pipelines.settings import DEFAULT_MODEL
from tests.support.events import T0, columns

H = 3_600_000
D = 24 * H


def test_timers_pop_only_the_rows_that_are_due() -> None:
    t = Timers((("last_active_ts", 14 * D),), bucket_ms=H)
    rows = np.arange(100_000, dtype=np.int64)
    last = T0 + (rows % 1000) * H  # spread over ~42 days
    t.schedule(rows, {"last_active_ts": last})
    clock = T0 + 14 * D + 10 * H
    due = t.pop_due(clock)
    due_at = last[due] + 14 * D
    assert (due_at <= clock).all()  # never early
    assert set(rows[last + 14 * D <= clock - H].tolist()) <= set(due.tolist())  # at most one bucket late
    assert t.pending() == 100_000 - due.shape[0]
    assert t.pop_due(clock).shape[0] == 0  # nothing twice


def test_timer_snapshot_round_trip_keeps_pending_timers() -> None:
    t = Timers((("last_active_ts", D),), bucket_ms=H)
    t.schedule(np.array([1, 2], np.int64), {"last_active_ts": np.array([0, T0, T0 + 5 * H], np.int64)})
    r = Timers.restore(t.snapshot())
    assert r.next_due_ms() == -(-(T0 + D) // H) * H
    assert r.pop_due(T0 + D + H).tolist() == [1]
    assert r.pop_due(T0 + D + 6 * H).tolist() == [2]


def test_timers_skip_rows_whose_reference_time_never_happened() -> None:
    t = Timers((("last_order_ts", D),), bucket_ms=H)
    t.schedule(np.array([0, 1], np.int64), {"last_order_ts": np.array([NEVER, T0], np.int64)})
    assert t.pending() == 1 and t.pop_due(T0 + 2 * D).tolist() == [1]


def _evaluated_at(proc: ShardProcessor, user: str, res: object) -> list[int]:
    return [int(fr.version) for fr in res.rows if (fr.user_id == user).any()]  # type: ignore[attr-defined]


def test_a_refresh_comes_one_interval_after_a_users_last_evaluation_so_daily_actives_get_none() -> None:
    proc = ShardProcessor(ShardConfig())
    seen: dict[str, list[int]] = {"daily": [], "silent": []}
    proc.process(columns([("daily", T0, "page_view"), ("silent", T0, "page_view")]))
    refreshes = 0
    for hour in range(1, 6 * 24):
        ev = [("clock", T0 + hour * H, "page_view")]
        if hour % 20 == 0:  # "daily" comes back every 20 hours: never silent for a whole day
            ev.append(("daily", T0 + hour * H, "page_view"))
        res = proc.process(columns(ev))
        refreshes += res.refresh_rows
        for user in seen:
            seen[user] += _evaluated_at(proc, user, res)
    daily_gaps, silent_gaps = np.diff(seen["daily"]), np.diff(seen["silent"])
    assert (daily_gaps <= 20 * H + H).all() and len(seen["daily"]) >= 6  # its own events, no refresh between
    assert len(seen["silent"]) >= 5 and (silent_gaps >= D).all() and (silent_gaps <= D + H).all()
    assert refreshes > 0


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
    logic.on_item(("s0", Slice.of(columns([("quiet", T0, "page_view")]))))
    first = logic.notify_at()
    assert first is not None and first.timestamp() == T0 / 1000 + 30
    wall.t += 10  # not idle long enough yet
    assert logic.on_notify()[0] == []
    wall.t += 15 * 24 * 3600  # 15 days without a single event
    out, _ = logic.on_notify()
    assert len(out) == 1
    scores = {r.table: r.data.to_pylist() for r in out[0].records}
    assert {r["user_id"] for r in scores["user_scores"]} == {"quiet"}
    assert scores["user_scores"][-1]["stage"] == "dormant"  # the newest row: dormant, with no event
    transitions = [(r["from_stage"], r["to_stage"]) for r in scores["stage_transitions"]]
    assert transitions == [("none", "growing"), ("growing", "dormant")]


def test_idle_advance_is_off_by_default_for_replays() -> None:
    cfg = FlowConfig()
    metrics = PipelineMetrics(CollectorRegistry())
    score = ScoreStep(Scorer.from_dir(DEFAULT_MODEL, device="cpu"), cfg.shard, metrics, _Clock(0))
    logic = ShardLogic("s0", ShardProcessor(cfg.shard), score, metrics, cfg, _Clock(0))
    assert logic.notify_at() is None


def test_a_churned_user_who_returns_is_refreshed_daily_again_not_on_the_churned_weekly_cadence() -> None:
    # before: the returning user kept the weekly entry of their churned days, and their score went up to a
    # week stale while they were active again (the staleness alert fired on a healthy replay)
    proc = ShardProcessor(ShardConfig())
    proc.process(columns([("back", T0, "page_view")]))
    for day in range(1, 60):  # silent for 59 days: churned after 45, refreshed weekly then
        proc.process(columns([("clock", T0 + day * D, "page_view")]))
    back = T0 + 60 * D
    proc.process(columns([("back", back, "page_view")]))
    seen = []
    for hour in range(1, 3 * 24):
        res = proc.process(columns([("clock", back + hour * H, "page_view")]))
        seen += _evaluated_at(proc, "back", res)
    assert seen and seen[0] - back <= D + H  # the first refresh one day after their return
