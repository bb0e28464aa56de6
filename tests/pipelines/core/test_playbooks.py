"""Playbooks: priorities, cooldowns, quiet hours and daily caps, and that they survive a restart."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from pipelines.core.defaults import default_taxonomy
from pipelines.core.ledger import ActionLedger
from pipelines.core.playbook import Playbook, decide, load_playbook, playbook_context
from pipelines.core.shard import ShardConfig, ShardProcessor, Slice
from pipelines.flow.dataflow import FlowConfig, ScoreStep, ShardLogic
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.scoring.scorer import Scorer
from pipelines.settings import DEFAULT_MODEL
from tests.support.events import T0, columns

H = 3_600_000
D = 24 * H
TAX = default_taxonomy()
NEW, GROWING, MATURE, DORMANT, CHURNED = range(5)

PLAYBOOK = """
name: test
version: 3
taxonomy: lifecycle-5
quiet_hours: 1
day_starts_utc_offset_hours: 8
actions:
  welcome: {cooldown_days: 30, daily_cap: 5}
  wake: {cooldown_days: 7}
  care: {cooldown_days: 14, marketing: false}
rules:
  - {id: hush, priority: 1000, when: "not marketing_consent and tier != \\"vip\\"", action: none}
  - {id: care-vip, priority: 900, when: "tier == \\"vip\\" and at_risk", action: care}
  - {id: welcome-new, priority: 500, when: "stage == \\"new\\"", action: welcome}
  - {id: wake-any-new, priority: 100, when: "stage == \\"new\\" and reason(\\"days_since_active\\")", action: wake}
  - {id: wake-dormant, priority: 400, when: "stage == \\"dormant\\"", action: wake}
"""


@pytest.fixture
def pb(tmp_path: Path) -> Playbook:
    path = tmp_path / "pb.yaml"
    path.write_text(PLAYBOOK)
    return load_playbook(path, TAX)


def _ctx(n: int, *, stage: int = NEW, tier: int = 2, at_risk: bool = False, marketing: bool = True,
         reason: str | None = None) -> dict:  # fmt: skip
    from pipelines.core.features import INDEX

    top = np.full((n, 3), -1, np.int16)
    if reason is not None:
        top[:, 0] = INDEX[reason]
    return playbook_context(
        np.zeros((n, 71), np.float32),
        churn_risk=np.full(n, 0.9 if at_risk else 0.1, np.float32),
        purchase_propensity=np.full(n, 0.5, np.float32),
        stage=np.full(n, stage, np.int8),
        prev_stage=np.full(n, -1, np.int8),
        tier=np.full(n, tier, np.int8),
        at_risk=np.full(n, at_risk),
        marketing_consent=np.full(n, marketing),
        reason_features=top,
    )  # type: ignore[return-value]


def _names(pb: Playbook, codes: np.ndarray) -> list[str]:
    return [pb.actions[c].name if c >= 0 else "none" for c in codes.tolist()]


def _ledger(pb: Playbook) -> ActionLedger:
    return ActionLedger(pb.action_names, pb.rule_ids())


def test_highest_priority_available_rule_wins_and_falls_through_on_cooldown(pb: Playbook) -> None:
    led = _ledger(pb)
    rows = np.arange(2, dtype=np.int64)
    d = decide(pb, led, rows, _ctx(2, reason="days_since_active"), T0)
    assert _names(pb, d.action) == ["welcome", "welcome"] and d.granted.all()
    assert [led.rules[r] for r in d.rule] == ["welcome-new", "welcome-new"]
    # two hours later (past the quiet hour), welcome is cooling down: the next rule that matches gives "wake"
    d = decide(pb, led, rows, _ctx(2, reason="days_since_active"), T0 + 2 * H)
    assert _names(pb, d.action) == ["wake", "wake"] and d.granted.all()
    d = decide(pb, led, rows, _ctx(2, reason="days_since_active"), T0 + 4 * H)
    assert not d.granted.any()  # both cooling down: the current action stays "wake", granted at T0 + 2h
    assert _names(pb, d.action) == ["wake", "wake"] and d.at_ms.tolist() == [T0 + 2 * H] * 2


def test_quiet_hours_block_any_second_action(pb: Playbook) -> None:
    led = _ledger(pb)
    rows = np.array([0], np.int64)
    decide(pb, led, rows, _ctx(1, stage=NEW), T0)
    d = decide(pb, led, rows, _ctx(1, stage=DORMANT), T0 + H // 2)  # another action is due, but within 1 h
    assert not d.granted.any() and _names(pb, d.action) == ["welcome"]
    d = decide(pb, led, rows, _ctx(1, stage=DORMANT), T0 + H)
    assert d.granted.all() and _names(pb, d.action) == ["wake"]


def test_flapping_user_never_gets_the_same_action_twice_within_its_cooldown(pb: Playbook) -> None:
    led = _ledger(pb)
    rows = np.array([0], np.int64)
    grants: list[tuple[float, str]] = []
    for step in range(0, 60 * 24, 6):  # every 6 hours for 60 days, the stage flaps new <-> dormant
        stage = NEW if (step // 6) % 2 == 0 else DORMANT
        d = decide(pb, led, rows, _ctx(1, stage=stage), T0 + step * H)
        if d.granted[0]:
            grants.append((step / 24, _names(pb, d.action)[0]))
    for name, cooldown in (("welcome", 30), ("wake", 7)):
        days = [t for t, a in grants if a == name]
        assert days and all(b - a >= cooldown for a, b in zip(days, days[1:], strict=False)), (name, days)
    assert len([a for _, a in grants if a == "welcome"]) == 2  # day 0 and day 30


def test_daily_cap_is_split_over_shards_never_exceeded_and_resets_next_operating_day(pb: Playbook) -> None:
    shards = 3  # cap 5 -> shares 2, 2, 1
    assert [pb.cap_share(0, k, shards) for k in range(shards)] == [2, 2, 1]
    given = 0
    for k in range(shards):
        led = _ledger(pb)
        d = decide(pb, led, np.arange(10, dtype=np.int64), _ctx(10), T0, shard=k, shards=shards)
        n = int((np.array(_names(pb, d.action)) == "welcome").sum())
        assert n == pb.cap_share(0, k, shards)
        given += n
        # later the same operating day: nothing more for welcome (the others fall through to nothing)
        d = decide(pb, led, np.arange(10, 20, dtype=np.int64), _ctx(10), T0 + 600_000, shard=k, shards=shards)
        assert not d.granted.any()
    assert given == 5
    # the operating day starts at 00:00 UTC+8 = 16:00 UTC: a new day, a new share
    day = (T0 + 8 * H) // D
    next_day_utc = (day + 1) * D - 8 * H
    led = _ledger(pb)
    decide(pb, led, np.arange(10, dtype=np.int64), _ctx(10), next_day_utc - 1)
    d = decide(pb, led, np.arange(10, 20, dtype=np.int64), _ctx(10), next_day_utc)
    assert int(d.granted.sum()) == 5


def test_a_marketing_action_never_reaches_a_user_without_marketing_consent_whatever_the_rules_say(
    pb: Playbook,
) -> None:
    # "welcome-new" has no "and marketing_consent", and a VIP is not hushed: the action itself is marketing
    led = _ledger(pb)
    d = decide(pb, led, np.array([0, 1], np.int64), _ctx(2, marketing=False, tier=0), T0)
    assert not d.granted.any()
    d = decide(pb, led, np.array([2], np.int64), _ctx(1, marketing=True, tier=0), T0)
    assert _names(pb, d.action) == ["welcome"]


def test_none_rule_suppresses_lower_rules_but_service_rules_above_it_still_apply(pb: Playbook) -> None:
    led = _ledger(pb)
    d = decide(pb, led, np.array([0], np.int64), _ctx(1, marketing=False), T0)
    assert not d.granted.any() and _names(pb, d.action) == ["none"]
    d = decide(pb, led, np.array([1], np.int64), _ctx(1, marketing=False, tier=0, at_risk=True), T0)
    assert _names(pb, d.action) == ["care"]


def test_shipped_playbook_gives_users_without_marketing_consent_service_actions_only() -> None:
    from pipelines.core.defaults import default_playbook

    pb = default_playbook()
    led = _ledger(pb)
    n = 5 * 3
    stage = np.repeat(np.arange(5, dtype=np.int8), 3)
    tier = np.tile(np.arange(3, dtype=np.int8), 5)
    ctx = dict(_ctx(n, marketing=False, at_risk=True).extra)
    ctx.update(stage=stage, tier=tier)
    from pipelines.core.taxonomy import FeatureContext

    f = np.zeros((n, 71), np.float32)
    d = decide(pb, led, np.arange(n, dtype=np.int64), FeatureContext(f, ctx), T0)
    assert set(_names(pb, d.action)) == {"vip_care", "none"}


def test_cooldowns_and_caps_survive_a_restart_through_the_shard_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "pb.yaml"
    path.write_text(PLAYBOOK.replace("daily_cap: 5", "daily_cap: 1"))
    cfg = ShardConfig(playbook=load_playbook(path, TAX))
    fcfg = FlowConfig(shards=1, shard=cfg)
    metrics = PipelineMetrics(CollectorRegistry())
    score = ScoreStep(Scorer.from_dir(DEFAULT_MODEL, device="cpu"), cfg, metrics, lambda: T0 / 1000)

    def actions(logic: ShardLogic, evs: list[tuple]) -> dict[str, tuple[str, str]]:
        # an event of another user one tick later closes the events' ticks (docs/event-time.md)
        clock = ("zz-clock", max(e[1] for e in evs) + cfg.score_interval_ms, "page_view")
        (out,), _ = logic.on_item(("s0", Slice.of(columns([*evs, clock]))))
        rows = [r for rec in out.records if rec.table == "user_scores" for r in rec.data.to_pylist()]
        users = {e[0] for e in evs}
        return {r["user_id"]: (r["action"], r["action_rule"]) for r in rows if r["user_id"] in users}

    logic = ShardLogic("s0", ShardProcessor(cfg), score, metrics, fcfg, lambda: T0 / 1000)
    # a at T0 - H and b at T0: ticks ending at 22:00 and 23:00 in UTC+8 (T0 is 14:13Z), one operating day
    got = actions(logic, [("a", T0 - H, "register")])
    assert got == {"a": ("welcome", "welcome-new")}
    # restart: the snapshot goes through pickle as Bytewax stores it
    snap = pickle.loads(pickle.dumps(logic.snapshot()))
    logic = ShardLogic("s0", ShardProcessor.restore(cfg, snap), score, metrics, fcfg, lambda: T0 / 1000)
    # same operating day: the cap (1) is used up, so b gets no welcome
    got = actions(logic, [("b", T0, "register")])
    assert got == {"b": ("none", "")}
    # a flaps: unfollow (churned), then follow again (new) 3 days later: inside welcome's 30-day cooldown
    actions(logic, [("a", T0 + D, "unfollow")])
    snap = pickle.loads(pickle.dumps(logic.snapshot()))
    logic = ShardLogic("s0", ShardProcessor.restore(cfg, snap), score, metrics, fcfg, lambda: T0 / 1000)
    got = actions(logic, [("a", T0 + 3 * D, "follow")])
    assert got["a"] == ("welcome", "welcome-new")  # new again, but still the first grant (no new welcome)...
    ledger = logic.proc.ledger
    row = int(logic.proc.state.lookup(columns([("a", 0, "page_view")]).user_key)[0])
    tick = cfg.score_interval_ms
    t0 = -((-(T0 - H)) // tick) * tick  # the end of a's tick: when the grant was decided
    assert ledger.given[row, 0] == t0 // 1000 and ledger.at_ms(np.array([row]))[0] == t0  # ...granted once
    # after the cooldown it is granted again
    got = actions(logic, [("a", T0 + 31 * D, "unfollow"), ("a", T0 + 31 * D + H, "follow")])
    t31 = -((-(T0 + 31 * D + H)) // tick) * tick
    assert got["a"] == ("welcome", "welcome-new") and ledger.given[row, 0] == t31 // 1000


def test_ledger_restore_maps_history_by_action_name_when_the_playbook_changes(pb: Playbook) -> None:
    led = _ledger(pb)
    decide(pb, led, np.array([0], np.int64), _ctx(1), T0)
    snap = pickle.loads(pickle.dumps(led.snapshot(1)))
    reordered = ("care", "extra", "welcome")  # "wake" removed, "extra" added, order changed
    new = ActionLedger.restore(snap, reordered, ("welcome-new", "other"))
    assert new.given[0].tolist() == [0, 0, T0 // 1000] and new.current[0] == 2 and new.rule[0] == 0



def test_a_playbook_is_refused_for_another_taxonomy_and_its_rules_compile_against_its_own() -> None:
    from pipelines.core.rules import RuleError
    from pipelines.core.taxonomy import load_taxonomy

    with pytest.raises(RuleError, match="written for taxonomy 'aida-5', but the pipeline runs 'lifecycle-5'"):
        load_playbook("aida-5", TAX)
    aida = load_taxonomy("aida-5")
    pb = load_playbook("aida-5", aida)
    led = ActionLedger(pb.action_names, pb.rule_ids())
    ctx = _ctx(5)
    ctx.extra["stage"] = np.arange(5, dtype=np.int8)  # awareness .. loyalty
    d = decide(pb, led, np.arange(5, dtype=np.int64), ctx, T0)
    assert _names(pb, d.action) == ["intro_content", "engage_invite", "first_order_coupon", "none", "loyalty_points"]


def test_when_a_daily_cap_binds_the_users_with_the_lowest_keys_get_it_whatever_their_rows(pb: Playbook) -> None:
    # the same ten users, held at other state rows (rows are reused after eviction, at times batching decides)
    keys = np.array([90, 10, 70, 30, 50, 20, 80, 40, 60, 100], np.int64)
    picked = []
    for rows in (np.arange(10, dtype=np.int64), np.array([7, 2, 9, 0, 5, 1, 8, 3, 6, 4], np.int64)):
        led = _ledger(pb)
        order = np.argsort(rows)  # decide takes rows sorted, as the shard gives them
        d = decide(pb, led, rows[order], _ctx(10), T0, rank=keys[order])
        picked.append(sorted(keys[order][d.granted].tolist()))
    assert picked[0] == picked[1] == [10, 20, 30, 40, 50]  # cap 5: the five lowest keys
