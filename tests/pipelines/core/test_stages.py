import dataclasses

import numpy as np
import pytest

from pipelines.core.defaults import STAGES, default_taxonomy
from pipelines.core.shard import ShardConfig, ShardProcessor
from tests.support.events import T0, columns

D = 86_400_000
TAXONOMY = default_taxonomy()  # lifecycle-5: new 14d, dormant 14d, churned 45d, mature >= 2 orders, >= 3 active days


def _stage_of(user: str, history: list[tuple], now: int) -> str:
    """Feed a user's history plus a clock event from another user at `now`; return the user's stage."""
    proc = ShardProcessor(ShardConfig(taxonomy=TAXONOMY, allowed_lateness_ms=1000 * D))
    proc.process(columns(history))
    proc.process(columns([("clock", now, "page_view")]))
    row = proc.state.lookup(columns([(user, 0, "page_view")]).user_key)
    return STAGES[int(proc.state.stage[row[0]])]


@pytest.mark.parametrize(
    ("history", "now_days", "stage"),
    [
        ([("u", T0, "register"), ("u", T0 + D, "page_view")], 2, "new"),
        ([("u", T0, "register"), ("u", T0 + D, "order", 50.0)], 2, "growing"),  # first purchase ends "new"
        ([("u", T0, "page_view")], 1, "growing"),  # existing user first seen mid-life
        (
            [("u", T0, "order", 80.0), ("u", T0 + 3 * D, "page_view"), ("u", T0 + 6 * D, "order", 60.0)],
            7,
            "mature",
        ),
        ([("u", T0, "order", 80.0), ("u", T0 + D, "order", 60.0)], 2, "growing"),  # repeat buyer, too few active days
        ([("u", T0, "page_view")], 20, "dormant"),
        ([("u", T0, "order", 10.0)], 50, "churned"),
        ([("u", T0, "page_view"), ("u", T0 + D, "unfollow")], 2, "churned"),  # explicit churn, no silence needed
        ([("u", T0, "unfollow"), ("u", T0 + D, "follow")], 2, "new"),  # won back: reconnected
    ],
    ids=[
        "new",
        "first-order-growing",
        "existing-growing",
        "mature",
        "repeat-not-engaged",
        "dormant",
        "churned",
        "unfollow-churned",
        "refollow-new",
    ],
)
def test_stage_rules_on_hand_made_users(history: list[tuple], now_days: int, stage: str) -> None:
    assert _stage_of("u", history, T0 + now_days * D) == stage


def test_default_taxonomy_names_the_stages_training_and_evaluation_use() -> None:
    assert TAXONOMY.name == "lifecycle-5" and TAXONOMY.stages == STAGES
    assert TAXONOMY.silence_days == (14.0, 45.0)


def test_silent_user_moves_to_dormant_then_churned_without_new_events() -> None:
    proc = ShardProcessor(ShardConfig(taxonomy=TAXONOMY, timer_bucket_ms=3_600_000))
    proc.process(columns([("silent", T0, "order", 30.0), ("busy", T0, "page_view")]))
    seen: list[tuple[float, str]] = []
    for hour in range(1, 60 * 24):  # the busy user keeps the shard clock moving, hourly
        res = proc.process(columns([("busy", T0 + hour * 3_600_000, "page_view")]))
        for rows in res.rows:
            if "silent" in rows.user_id:
                i = list(rows.user_id).index("silent")
                if rows.prev_stage[i] != rows.stage[i] and rows.prev_stage[i] >= 0:  # a transition
                    seen.append(((rows.version - T0) / D, STAGES[int(rows.stage[i])]))
    assert [s for _, s in seen] == ["dormant", "churned"]
    # each transition fires within one timer bucket (1 h) after the threshold is crossed
    assert 14 <= seen[0][0] <= 14 + 1 / 24 + 1e-9
    assert 45 <= seen[1][0] <= 45 + 1 / 24 + 1e-9


def test_idle_clock_advance_fires_silence_timers() -> None:
    proc = ShardProcessor(ShardConfig(taxonomy=TAXONOMY))
    proc.process(columns([("quiet", T0, "page_view")]))
    res = proc.advance(T0 + 15 * D)
    last = res.rows[-1]
    assert list(last.user_id) == ["quiet"] and STAGES[int(last.stage[0])] == "dormant"
    later = proc.advance(T0 + 16 * D).rows  # at most the daily refresh: no change of stage
    assert all((r.prev_stage == r.stage).all() for r in later)


def test_late_events_are_dead_letters_not_state() -> None:
    proc = ShardProcessor(ShardConfig(taxonomy=TAXONOMY, allowed_lateness_ms=3_600_000))
    r0 = proc.process(columns([("a", T0 + 10 * D, "page_view")]))
    res = proc.process(
        columns([("a", T0 + 10 * D - 2 * 3_600_000, "order", 5.0), ("a", T0 + 10 * D - 60_000, "share")])
    )
    assert [r.reason.value for r in res.rejects] == ["late"]
    assert r0.applied + res.applied + proc.flush().applied == 2  # the first event and the share
    assert int(proc.state.order_count[0]) == 0


def test_first_score_of_a_user_reports_no_previous_stage() -> None:
    proc = ShardProcessor(ShardConfig())
    proc.process(columns([("a", T0, "page_view")]))
    res = proc.process(columns([("b", T0 + 3_600_000, "page_view")]))  # closes a's tick
    first = res.rows[0]
    assert list(first.user_id) == ["a"] and first.prev_stage.tolist() == [-1]
    assert np.isfinite(first.features).all()


def test_lateness_is_judged_per_input_partition_so_a_lagging_partition_is_not_late() -> None:
    proc = ShardProcessor(ShardConfig(taxonomy=TAXONOMY, allowed_lateness_ms=3_600_000))
    ahead = columns([("a", T0 + 10 * D, "page_view")])
    behind = columns([("b", T0, "page_view")])
    proc.process(dataclasses.replace(ahead, partition=0))
    res = proc.process(dataclasses.replace(behind, partition=1))
    assert res.rejects == []
    assert res.applied + proc.flush().applied == 2  # both applied, in their ticks


def test_last_event_time_covers_every_event_type() -> None:
    proc = ShardProcessor(ShardConfig())
    proc.process(columns([("g", T0, "leave_group"), ("h", T0 + 5, "unfollow")]))
    (rows,) = proc.flush().rows
    assert sorted(rows.last_event_ms.tolist()) == [T0, T0 + 5]


def test_new_ends_on_time_with_no_event_on_the_acquisition_timer() -> None:
    proc = ShardProcessor(ShardConfig(taxonomy=TAXONOMY))
    proc.process(columns([("joiner", T0, "register")]))
    moves: list[tuple[int, str, str]] = []
    for half_day in range(1, 2 * 20):  # the joiner stays active (every 12 h, off the hour) but never orders
        res = proc.process(columns([("joiner", T0 + half_day * D // 2 + 1_800_000, "page_view")]))
        for rows in res.rows:
            for uid, prev, stage in zip(rows.user_id, rows.prev_stage, rows.stage, strict=True):
                if uid == "joiner" and prev != stage:
                    moves.append((rows.version, STAGES[prev] if prev >= 0 else "none", STAGES[stage]))
    assert [(a, b) for _, a, b in moves] == [("none", "new"), ("new", "growing")]
    # new_days = 14: the acquisition timer ends "new" on time, at most one timer bucket late, not at the next
    # event (12 h apart) nor the next refresh
    assert T0 + 14 * D <= moves[1][0] <= T0 + 14 * D + 3_600_000
