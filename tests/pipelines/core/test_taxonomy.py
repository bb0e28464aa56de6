"""Stage taxonomies as configuration: the shipped ones on hand-made users, and errors that point at the line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pipelines.core.features import FEATURE_NAMES
from pipelines.core.playbook import load_playbook
from pipelines.core.rules import RuleError
from pipelines.core.shard import ShardConfig, ShardProcessor, ShardResult
from pipelines.core.taxonomy import TAXONOMY_DIR, load_taxonomy
from tests.support.events import T0, columns

D = 86_400_000
SHIPPED = ("lifecycle-5", "aida-5", "groups-4")


def _stage_of(taxonomy: str, history: list[tuple], now_days: float) -> str:
    """Feed the user "u" its history plus a clock event of another user at ``now_days``; return u's stage."""
    tax = load_taxonomy(taxonomy)
    cfg = ShardConfig(taxonomy=tax, playbook=load_playbook(taxonomy, tax), allowed_lateness_ms=1000 * D)
    proc = ShardProcessor(cfg)
    proc.process(columns(history))
    proc.process(columns([("clock", T0 + int(now_days * D), "page_view")]))
    row = proc.state.lookup(columns([("u", 0, "page_view")]).user_key)
    return tax.stages[int(proc.state.stage[row[0]])]


def _days(*evs: tuple[float, str] | tuple[float, str, float]) -> list[tuple]:
    return [("u", T0 + int(e[0] * D), *e[1:]) for e in evs]


@pytest.mark.parametrize(
    ("taxonomy", "history", "now_days", "stage"),
    [
        # lifecycle-5 (导入/成长/成熟/休眠/流失) is also covered case by case in test_stages.py
        ("lifecycle-5", _days((0, "register")), 1, "new"),
        ("lifecycle-5", _days((0, "order", 80.0), (3, "page_view"), (6, "order", 60.0)), 7, "mature"),
        ("lifecycle-5", _days((0, "page_view")), 20, "dormant"),
        ("lifecycle-5", _days((0, "page_view"), (1, "unsubscribe")), 2, "churned"),
        # AIDA-style funnel
        ("aida-5", _days((0, "follow")), 1, "awareness"),
        ("aida-5", _days((0, "follow"), (1, "page_view")), 2, "interest"),
        ("aida-5", _days((0, "follow"), (1, "page_view"), (2, "join_group")), 3, "engagement"),
        ("aida-5", _days((0, "page_view"), (1, "order", 99.0)), 2, "conversion"),
        ("aida-5", _days((0, "order", 99.0), (20, "order", 59.0)), 21, "loyalty"),
        ("aida-5", _days((0, "order", 99.0), (20, "order", 59.0)), 85, "awareness"),  # lapsed: 65 days silent
        ("aida-5", _days((0, "page_view")), 31, "awareness"),  # interest faded after 30 silent days
        # four groups
        ("groups-4", _days((0, "register")), 1, "new"),
        ("groups-4", _days((0, "page_view")), 1, "active"),
        ("groups-4", _days((0, "register"), (1, "order", 30.0)), 5, "paying"),
        ("groups-4", _days((0, "order", 30.0), *[(d, "page_view") for d in range(5, 36, 5)]), 36, "active"),
        ("groups-4", _days((0, "order", 30.0)), 31, "churned"),
    ],
)
def test_shipped_taxonomy_labels_hand_made_users(
    taxonomy: str, history: list[tuple], now_days: float, stage: str
) -> None:
    assert _stage_of(taxonomy, history, now_days) == stage


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_taxonomies_and_their_playbooks_load(name: str) -> None:
    tax = load_taxonomy(name)
    pb = load_playbook(name, tax)
    assert tax.name == name and pb.taxonomy == name
    assert tax.silence_days, "every shipped taxonomy moves silent users on a timer"
    assert len(set(tax.stages)) == len(tax.stages) >= 4


@pytest.mark.parametrize("name", SHIPPED)
def test_silent_user_changes_stage_on_the_taxonomy_timer_without_events(name: str) -> None:
    tax = load_taxonomy(name)
    cfg = ShardConfig(taxonomy=tax, playbook=load_playbook(name, tax))
    proc = ShardProcessor(cfg)
    proc.process(columns([("silent", T0, "order", 30.0), ("busy", T0, "page_view")]))
    stages = []
    for hour in range(1, 70 * 24, 6):
        res = proc.process(columns([("busy", T0 + hour * 3_600_000, "page_view")]))
        for rows in res.rows:
            if "silent" in rows.user_id:
                i = list(rows.user_id).index("silent")
                if 0 <= rows.prev_stage[i] != rows.stage[i]:  # a move (refreshes re-state the same stage)
                    stages.append(tax.stages[int(rows.stage[i])])
    assert stages, f"{name}: the silent user never moved"
    assert len(stages) == len(set(stages))  # each move emitted once


def test_strict_silence_threshold_fires_just_after_it(tmp_path: Path) -> None:
    text = (
        (TAXONOMY_DIR / "groups-4.yaml")
        .read_text()
        .replace("days_since_active >= churned_after_days", "days_since_active > churned_after_days")
    )
    path = tmp_path / "strict.yaml"
    path.write_text(text)
    tax = load_taxonomy(path)
    assert tax.silence_ms == (30 * D + 60_000,)
    cfg = ShardConfig(taxonomy=tax, playbook=load_playbook("groups-4", tax), timer_bucket_ms=1)
    proc = ShardProcessor(cfg)
    proc.process(columns([("silent", T0, "page_view"), ("busy", T0, "page_view")]))

    def silent_stages(res: ShardResult) -> list[tuple[int, str]]:
        out = []
        for rows in res.rows:
            if "silent" in rows.user_id:
                out.append((rows.version, tax.stages[int(rows.stage[list(rows.user_id).index("silent")])]))
        return out

    seen = silent_stages(proc.process(columns([("busy", T0 + 30 * D, "page_view")])))
    assert all(stage != "churned" for _, stage in seen)  # exactly 30 days: not yet "> 30"
    tick = cfg.score_interval_ms
    seen = silent_stages(proc.process(columns([("busy", T0 + 30 * D + 60_000 + tick, "page_view")])))
    churned = [v for v, stage in seen if stage == "churned"]
    # just after the threshold: at the first tick boundary after it
    assert churned and T0 + 30 * D + 60_000 <= churned[0] <= T0 + 30 * D + 60_000 + tick


def test_taxonomy_change_relabels_restored_state_without_transitions() -> None:
    old = ShardProcessor(ShardConfig())
    old.process(columns([("a", T0, "order", 20.0), ("b", T0, "register"), ("c", T0 + D, "page_view")]))
    old.process(columns([("z", T0 + D + 3_600_000, "page_view")]))  # closes c's tick: everyone labelled
    snap = old.snapshot()
    tax = load_taxonomy("groups-4")
    new = ShardProcessor.restore(ShardConfig(taxonomy=tax, playbook=load_playbook("groups-4", tax)), snap)
    rows = new.state.lookup(columns([("a", 0, "page_view"), ("b", 0, "page_view"), ("c", 0, "page_view")]).user_key)
    assert [tax.stages[int(s)] for s in new.state.stage[rows]] == ["paying", "new", "active"]
    assert new.timers.specs == tax.timers
    new.process(columns([("c", T0 + D + 2 * 3_600_000, "page_view")]))
    res = new.process(columns([("z", T0 + D + 3 * 3_600_000, "page_view")]))  # closes c's new tick
    (rows,) = [r for r in res.rows if "c" in r.user_id]
    i = list(rows.user_id).index("c")
    assert rows.prev_stage[i] == rows.stage[i]  # a user already labelled: no transition


# ---------------------------------------------------------------------- errors: file, line, field

GOOD = (TAXONOMY_DIR / "lifecycle-5.yaml").read_text(encoding="utf-8")


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def _changed_line(before: str, after: str) -> int:
    """The (last) line the edit changed: where the error must point."""
    pairs = zip(before.splitlines(), after.splitlines(), strict=False)
    return max(i for i, (a, b) in enumerate(pairs, 1) if a != b)


def _assert_edit_is_refused_at_its_line(
    path: Path, good: str, old: str, new: str, field: str, message: str, load: Callable[[Path], object]
) -> None:
    """Write ``good`` with ``old`` replaced by ``new``; loading it must fail at that line and field."""
    assert old in good, old
    text = good.replace(old, new, 1)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RuleError) as err:
        load(path)
    line = _changed_line(good, text)
    assert str(err.value).startswith(f"{path}:{line}: {field}: "), str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("old", "new", "field", "message"),
    [
        (
            "when: days_since_active >= dormant_after_days",
            "when: days_since_activ >= dormant_after_days",
            "stages[3].when",
            "unknown name 'days_since_activ' (did you mean 'days_since_active'?)",
        ),
        (
            "when: days_since_active >= dormant_after_days",
            "when: churn_risk >= 0.9",
            "stages[3].when",
            "'churn_risk' cannot be used here: stages are decided before scoring",
        ),
        (
            'at_risk: stage in ["new", "growing", "mature"]',
            'at_risk: stage in ["new", "growing", "matured"]',
            "at_risk",
            "stage has no value 'matured'",
        ),
        (
            "  - name: growing\n    label: 成长\n    when: otherwise",
            "  - name: growing\n    label: 成长\n    when: lifetime_orders >= 1",
            "stages[1].when",
            "checked last, so its rule must be 'otherwise'",
        ),
        (
            "    when: order_value_90d >= vip_value_90d",
            "    whne: order_value_90d >= vip_value_90d",
            "tiers[0].whne",
            "unknown field 'whne' (did you mean 'when'?)",
        ),
        ("version: 1", "version: one", "version", "expected int, got str 'one'"),
        (
            "precedence: [churned, dormant, new, mature, growing]",
            "precedence: [churned, dormant, new, growing]",
            "precedence",
            "must list every stage once; missing: mature",
        ),
        (
            "when: lifetime_orders >= mature_min_orders and",
            "when: lifetime_orders >= mature_min_orders and and",
            "stages[2].when",
            "cannot parse",
        ),
        ("  new_days: 14 ", "  new_days: fourteen ", "params.new_days", "expected int or float"),
    ],
)
def test_taxonomy_errors_name_the_file_line_and_field(
    tmp_path: Path, old: str, new: str, field: str, message: str
) -> None:
    _assert_edit_is_refused_at_its_line(tmp_path / "bad.yaml", GOOD, old, new, field, message, load_taxonomy)


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(GOOD.replace("tiers:", "tiers: [", 1), encoding="utf-8")
    with pytest.raises(RuleError, match=rf"^{path}:\d+: YAML syntax"):
        load_taxonomy(path)


def test_unknown_taxonomy_name_lists_the_shipped_ones() -> None:
    with pytest.raises(RuleError, match="aida-5, groups-4, lifecycle-5"):
        load_taxonomy("lifecycle-7")


PLAYBOOK = (TAXONOMY_DIR.parent / "playbooks" / "lifecycle-5.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("old", "new", "field", "message"),
    [
        (
            "    action: welcome_coupon",
            "    action: welcome_cupon",
            "rules[3].action",
            "unknown action 'welcome_cupon'",
        ),
        ("taxonomy: lifecycle-5", "taxonomy: aida-5", "taxonomy", "written for taxonomy 'aida-5'"),
        (
            'when: stage == "new" and marketing_consent',
            'when: stage == "neww" and marketing_consent',
            "rules[3].when",
            "stage has no value 'neww'; it is one of new, growing, mature, dormant, churned",
        ),
        ('reason("days_since_active")', 'reason("days_since_activity")', "rules[4].when", "not a feature name"),
        (
            "welcome_coupon:   {cooldown_days: 30,",
            "welcome_coupon:   {cooldown_days: -3,",
            "actions.welcome_coupon.cooldown_days",
            "must be >= 0",
        ),
        ("  - id: nurture-growing", "  - id: welcome-new", "rules[6].id", "rule id 'welcome-new' is used twice"),
    ],
)
def test_playbook_errors_name_the_file_line_and_field(
    tmp_path: Path, old: str, new: str, field: str, message: str
) -> None:
    def load(path: Path) -> object:
        return load_playbook(path, load_taxonomy("lifecycle-5"))

    _assert_edit_is_refused_at_its_line(tmp_path / "bad-playbook.yaml", PLAYBOOK, old, new, field, message, load)


def test_run_refuses_to_start_with_an_invalid_taxonomy_and_says_where(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    text = GOOD.replace("days_since_acquire < new_days", "days_since_acquire < new_dayz", 1)
    path.write_text(text, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", "run", "--taxonomy", str(path), "--store", f"chdb://{tmp_path}/s",
         "--metrics-port", "0", "--sim-users", "10"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr  # a configuration error (docs/operations.md, exit codes)
    line = _line_of(text, "new_dayz")
    assert f"{path}:{line}: stages[0].when: unknown name 'new_dayz' (did you mean 'new_days'?)" in proc.stderr
    assert not (tmp_path / "s").exists()  # nothing was started or created


def test_conditions_are_vectorised_and_match_row_by_row_evaluation() -> None:
    tax = load_taxonomy("aida-5")
    rng = np.random.default_rng(5)
    f = rng.uniform(0, 100, (2000, 71)).astype(np.float32)
    got = tax.assign_stages(f)
    from pipelines.core.features import INDEX

    for i in range(0, 2000, 97):
        row = {k: float(f[i, j]) for k, j in INDEX.items()}
        expect = None
        for code in tax.precedence:
            rule = tax.stage_rules[code]
            if rule.always or bool(
                eval(rule.source.replace("\n", " "), {}, {**row, **tax.params})  # noqa: S307 - test oracle
            ):
                expect = code
                break
        assert got[i] == expect, i


@pytest.mark.parametrize(
    ("rule", "exact"),
    [
        ('stage in ["new", "growing", "mature"] and churn_risk >= 0.6', True),
        ("(churn_risk > 0.3 and churn_risk < 0.7) or purchase_propensity >= 0.9 or days_since_active > 20", True),
        ("churn_risk * 2 > 1.2", False),  # arithmetic on a score: no regions, every row goes to the model
    ],
)
def test_at_risk_reads_scores_says_which_rows_the_model_can_change(tmp_path: Path, rule: str, exact: bool) -> None:
    text = (TAXONOMY_DIR / "lifecycle-5.yaml").read_text()
    old = next(line for line in text.splitlines() if line.startswith("at_risk:"))
    path = tmp_path / "t.yaml"
    path.write_text(text.replace(old, f"at_risk: {rule}"))
    tax = load_taxonomy(path)
    assert (tax.at_risk_points is not None) == exact
    rng = np.random.default_rng(5)
    n = 2_000
    f = rng.uniform(0, 40, (n, len(FEATURE_NAMES))).astype(np.float32)
    stage = rng.integers(0, len(tax.stages), n).astype(np.int8)
    reads = tax.at_risk_reads_scores(f, stage)
    answers = np.stack(
        [
            tax.at_risk(f, stage, rng.uniform(0, 1, n).astype(np.float32), rng.uniform(0, 1, n).astype(np.float32))
            for _ in range(64)
        ]
    )
    varies = (answers != answers[0]).any(axis=0)
    assert not varies[~reads].any()  # a row said to be decided without scores never changes with them
    assert varies[reads].mean() > 0.9  # and the rows said to need them do change (random scores find most)
