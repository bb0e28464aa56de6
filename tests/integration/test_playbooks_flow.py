"""Playbooks in the real pipeline: actions written with the scores, cooldowns and caps kept across a
restart from the Bytewax recovery store, and the action queue query over what the pipeline wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.core.playbook import PLAYBOOK_DIR
from pipelines.io.store.chdb import ChdbStore
from pipelines.settings import Settings
from tests.support.events import T0

pytestmark = pytest.mark.integration

H = 3_600_000
D = 24 * H
QUEUE = (Path(__file__).resolve().parents[2] / "sql" / "queries" / "action_queue.sql").read_text()
_seq = iter(range(1, 1_000_000))


def ev(user: str, at_ms: int, kind: str, amount: float | None = None) -> bytes:
    e: dict[str, object] = {
        "event_id": f"e{next(_seq)}",
        "user_id": user,
        "ts": at_ms,
        "type": kind,
        "channel": "wecom",
    }
    if amount is not None:
        e["amount"] = amount
    return json.dumps(e).encode()


def _run(inputs: str, store: Path, recovery: Path, playbook: Path) -> None:
    cmd = [
        sys.executable, "-m", "pipelines.cli.main", "run", "--input", inputs, "--store", f"chdb://{store}",
        "--metrics-port", "0", "--shards", "1", "--batch-events", "2", "--recovery-dir", str(recovery),
        "--epoch-seconds", "0.2", "--playbook", str(playbook),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store written by two runs over two files sharing one recovery store (a restart in between).

    - ``flap`` registers (new -> welcome_coupon), unsubscribes (churned) and, after the restart, follows
      again three days later (new again, inside welcome_coupon's 30-day cooldown).
    - ``c1`` / ``c2`` register on the same operating day, before / after the restart: the daily cap of
      welcome_coupon is 1 in this playbook, so only c1 gets it.
    - ``clock`` keeps event time moving.
    """
    tmp = tmp_path_factory.mktemp("playbooks")
    text = (PLAYBOOK_DIR / "lifecycle-5.yaml").read_text()
    playbook = tmp / "playbook.yaml"
    playbook.write_text(
        text.replace(
            "welcome_coupon:   {cooldown_days: 30, daily_cap: 5000,",
            "welcome_coupon:   {cooldown_days: 30, daily_cap: 1,",
        )
    )
    day2 = T0 + 2 * D
    first = [
        ev("flap", T0, "register"),
        ev("clock", T0 + H, "page_view"),
        ev("flap", T0 + D, "unsubscribe"),
        ev("clock", T0 + D + H, "page_view"),
        ev("c1", day2, "register"),
        ev("clock", day2 + 60_000, "page_view"),
    ]
    second = [ev("c2", day2 + 120_000, "register"), ev("clock", day2 + 180_000, "page_view"),
              ev("flap", T0 + 3 * D, "follow"), ev("clock", T0 + 3 * D + H, "page_view")]  # fmt: skip
    (tmp / "first.jsonl").write_bytes(b"\n".join(first) + b"\n")
    (tmp / "second.jsonl").write_bytes(b"\n".join(second) + b"\n")
    store, recovery = tmp / "store.chdb", tmp / "recovery"
    _run(str(tmp / "first.jsonl"), store, recovery, playbook)
    # the restart resumes first.jsonl at its end (Bytewax keeps its partition) and reads second.jsonl
    _run(f"{tmp / 'first.jsonl'},{tmp / 'second.jsonl'}", store, recovery, playbook)
    return store


def _q(store: Path, sql: str, **params: object) -> list[dict]:
    s = ChdbStore(store)
    try:
        return s.query(sql, params=params).to_pylist()
    finally:
        s.close()


def test_every_score_row_names_its_taxonomy_playbook_and_action(written: Path) -> None:
    rows = _q(written, "SELECT * FROM user_scores FINAL ORDER BY user_id")
    assert {r["user_id"] for r in rows} == {"flap", "c1", "c2", "clock"}
    for r in rows:
        assert (r["taxonomy"], r["taxonomy_version"]) == ("lifecycle-5", 1)
        assert (r["playbook"], r["playbook_version"]) == ("lifecycle-5-default", 1)
        assert (r["action"] == "none") == (r["action_at"] is None) == (r["action_rule"] == "")


def test_flapping_user_is_not_welcomed_twice_inside_the_cooldown_across_a_restart(written: Path) -> None:
    (flap,) = _q(written, "SELECT stage, action, action_rule, action_at FROM user_scores FINAL WHERE user_id = 'flap'")
    assert flap["stage"] == "new"
    assert (flap["action"], flap["action_rule"]) == ("welcome_coupon", "welcome-new")
    # the first grant (at the end of the tick of flap's registration), not a second one at day 3
    assert int(flap["action_at"].timestamp() * 1000) == _tick(T0)
    history = _q(written, "SELECT action, action_at FROM score_history FINAL WHERE user_id = 'flap' ORDER BY version")
    grants = {(h["action"], h["action_at"]) for h in history if h["action"] != "none"}
    assert len(grants) == 1
    trans = _q(
        written,
        "SELECT from_stage, to_stage, action, action_at FROM stage_transitions FINAL "
        "WHERE user_id = 'flap' ORDER BY at",
    )
    assert [(t["from_stage"], t["to_stage"]) for t in trans] == [
        ("none", "new"),
        ("new", "churned"),
        ("churned", "new"),
    ]
    assert {t["action"] for t in trans} == {"welcome_coupon"}


def _tick(t: int) -> int:
    tick = int(Settings().score_interval_seconds * 1000)
    return -((-t) // tick) * tick


def _operating_day(ms: int) -> int:
    return (ms + 8 * H) // D


def test_daily_cap_holds_across_a_restart(written: Path) -> None:
    rows = _q(
        written,
        "SELECT user_id, version, action, action_at FROM score_history WHERE user_id IN ('c1', 'c2') "
        "ORDER BY version, scored_at",  # a provisional row (end of the first run) before the committed one
    )
    # c1 and c2 registered in one tick, across the restart: the cap (1 a day) gave the day's coupon to c1 only
    reg = _tick(T0 + 2 * D)
    at_reg = {r["user_id"]: r["action"] for r in rows if r["version"] == reg}
    assert at_reg["c1"] == "welcome_coupon" and at_reg["c2"] == "none"
    # the refresh re-evaluates c2, still new, on the next operating day: its coupon comes from that day's cap
    grants = {(r["user_id"], int(r["action_at"].timestamp() * 1000)) for r in rows if r["action_at"] is not None}
    days = [_operating_day(at) for _, at in grants]
    assert len(grants) == 2 and len(set(days)) == 2, grants  # never two grants on one operating day


def test_action_queue_lists_fresh_unexported_actions_once(written: Path) -> None:
    store = ChdbStore(written)
    try:
        queue = store.query(QUEUE, params={"action": "welcome_coupon", "max_age_hours": 24 * 30, "limit": 100})
        assert sorted(queue.column("user_id").to_pylist()) == ["c1", "c2", "flap"]
        fresh = store.query(QUEUE, params={"action": "", "max_age_hours": 1, "limit": 100})
        assert fresh.column("user_id").to_pylist() == ["c2"]  # the newest grant (c2's, a day after c1's)
        c1 = queue.filter(queue.column("user_id").to_numpy(zero_copy_only=False) == "c1")
        store.insert("action_exports", c1.select(["user_id", "action", "action_at"]))
        again = store.query(QUEUE, params={"action": "welcome_coupon", "max_age_hours": 24 * 30, "limit": 100})
        assert sorted(again.column("user_id").to_pylist()) == ["c2", "flap"]
    finally:
        store.close()


def test_users_who_refused_marketing_are_scored_but_get_service_actions_only(tmp_path: Path) -> None:
    store = tmp_path / "store.chdb"
    events = tmp_path / "events.jsonl"
    # two new users; "quiet" refused marketing before the run (recorded through the CLI)
    events.write_bytes(
        b"\n".join([ev("quiet", T0, "register"), ev("loud", T0, "register"), ev("clock", T0 + H, "page_view")]) + b"\n"
    )
    cli = [
        sys.executable,
        "-m",
        "pipelines.cli.main",
        "consent",
        "--user",
        "quiet",
        "--no-marketing",
        "--store",
        f"chdb://{store}",
    ]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "recorded no-marketing for 1 user(s)" in out.stdout, out.stderr
    cmd = [sys.executable, "-m", "pipelines.cli.main", "run", "--input", str(events), "--store", f"chdb://{store}",
           "--metrics-port", "0", "--shards", "2"]  # fmt: skip
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    got = {
        r["user_id"]: (r["stage"], r["action"])
        for r in _q(store, "SELECT user_id, stage, action FROM user_scores FINAL")
    }
    assert got["quiet"] == ("new", "none")  # scored (not opted out), but no welcome coupon
    assert got["loud"] == ("new", "welcome_coupon")
