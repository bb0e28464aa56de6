"""The downstream contract on data the real pipeline wrote: audience queries, consent, erasure, admin CLI.

One crafted NDJSON stream, run once through the real flow into chDB, where each
user is built to land in a known stage and tier by the end (the clock user
``busy`` keeps event time moving for 60 days, so silence timers fire). Each
test works on its own copy of that store. ``at_risk_threshold=0`` makes every
active user at-risk, so the at-risk audience is decided by the rules, not by
the model's score.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry

from pipelines.flow.runner import run_pipeline
from pipelines.io.store.chdb import ChdbStore
from pipelines.privacy.erasure import erased_user_hashes, forget_user, opted_out_users, set_consent, user_hash
from pipelines.settings import Settings
from tests.support.events import T0, line
from tests.support.taxonomy import taxonomy_variant

pytestmark = pytest.mark.integration

D = 86_400_000
SALT = b"test-erasure-key"
QUERIES = Path(__file__).resolve().parents[2] / "sql" / "queries"
STAGES = ("new", "growing", "mature", "dormant", "churned")
OPTED_OUT = ("vip_dormant_optout", "vip_active_optout")

# user -> (stage, tier) at the end of the stream
EXPECTED = {
    "busy": ("growing", "potential"),  # a page view every 6 hours, days 0..60: the clock
    "vip_dormant": ("dormant", "vip"),  # ¥3000 on day 40, silent for 20 days
    "vip_dormant_optout": ("dormant", "vip"),
    "regular_churned": ("churned", "regular"),  # ¥50 on day 5, silent for 55 days
    "unsub_regular": ("churned", "regular"),  # ¥80 on day 50, unsubscribed on day 59
    "potential_dormant": ("dormant", "potential"),  # one page view on day 40, never bought
    "vip_active": ("mature", "vip"),  # ¥2000 on days 55 and 58, a view on day 57
    "vip_active_optout": ("mature", "vip"),
    "regular_active": ("growing", "regular"),  # ¥30 on day 56
    "new_user": ("new", "potential"),  # registered on day 58
}


def crafted_events() -> list[bytes]:
    n = iter(range(1, 10**6))

    def ev(user: str, day: float, kind: str, **kw: object) -> tuple[int, bytes]:
        ts = int(T0 + day * D)
        return ts, line(event_id=f"e{next(n)}", user_id=user, ts=ts, type=kind, **kw)

    evs = [ev("busy", q / 4, "page_view") for q in range(4 * 60 + 1)]
    for u in ("vip_dormant", "vip_dormant_optout"):
        evs.append(ev(u, 40, "order", amount=3000.0))
    evs += [ev("regular_churned", 5, "order", amount=50.0), ev("potential_dormant", 40, "page_view")]
    evs += [ev("unsub_regular", 50, "order", amount=80.0), ev("unsub_regular", 59, "unsubscribe")]
    for u in ("vip_active", "vip_active_optout"):
        evs += [ev(u, 55, "order", amount=2000.0), ev(u, 57, "page_view"), ev(u, 58, "order", amount=2000.0)]
    evs += [ev("regular_active", 56, "order", amount=30.0), ev("new_user", 58, "register")]
    evs.append(ev("vip_dormant", 41, "order", amount=-1.0))  # a dead letter that belongs to vip_dormant
    return [b for _, b in sorted(evs, key=lambda e: e[0])]


def run(input_path: Path, store_dir: Path) -> None:
    s = Settings(
        input=str(input_path),
        store=f"chdb://{store_dir}",
        metrics_port=0,
        shards=2,
        batch_events=20,
        taxonomy=str(taxonomy_variant(store_dir.parent / "taxonomy", at_risk_threshold=0.0)),
    )
    run_pipeline(s, registry=CollectorRegistry(), serve_metrics=False)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store the pipeline wrote from the crafted stream, with the opt-outs recorded afterwards."""
    tmp = tmp_path_factory.mktemp("downstream")
    src = tmp / "events.jsonl"
    src.write_bytes(b"\n".join(crafted_events()) + b"\n")
    run(src, tmp / "store.chdb")
    store = ChdbStore(tmp / "store.chdb")
    try:
        set_consent(store, OPTED_OUT, True, "test")
    finally:
        store.close()
    return tmp / "store.chdb"


@pytest.fixture
def store_dir(written: Path, tmp_path: Path) -> Path:
    """A private copy of the written store and of the pipeline state beside it (tests change it)."""
    state = written.with_name(written.name + ".state")
    if state.exists():
        shutil.copytree(state, tmp_path / "store.chdb.state")
    return Path(shutil.copytree(written, tmp_path / "store.chdb", symlinks=True))  # chDB links are relative


@pytest.fixture
def store(store_dir: Path) -> Iterator[ChdbStore]:
    st = ChdbStore(store_dir)
    try:
        yield st
    finally:
        st.close()


def ask(store: ChdbStore, name: str, **params: object) -> list[dict]:
    return store.query((QUERIES / f"{name}.sql").read_text(), params=params).to_pylist()


def users(rows: list[dict]) -> set[str]:
    return {r["user_id"] for r in rows}


def test_pipeline_wrote_the_crafted_stages_and_tiers(store: ChdbStore) -> None:
    rows = store.query("SELECT user_id, stage, tier FROM user_scores FINAL").to_pylist()
    assert {r["user_id"]: (r["stage"], r["tier"]) for r in rows} == EXPECTED


@pytest.mark.parametrize("stage", STAGES)
def test_stage_audience_returns_the_consented_users_in_the_stage(store: ChdbStore, stage: str) -> None:
    want = {u for u, (s, _) in EXPECTED.items() if s == stage and u not in OPTED_OUT}
    got = ask(store, "stage_audience", stage=stage)
    assert users(got) == want and len(got) == len(want)
    assert all(r["stage"] == stage for r in got)


def test_win_back_candidates_are_dormant_or_churned_valuable_and_consented(store: ChdbStore) -> None:
    got = ask(store, "win_back_candidates")
    assert [r["user_id"] for r in got][:1] == ["vip_dormant"]  # VIPs first
    assert users(got) == {"vip_dormant", "regular_churned", "unsub_regular"} and len(got) == 3
    # left out: vip_dormant_optout (opted out), potential_dormant (never bought)


def test_at_risk_vips_are_active_vips_who_did_not_opt_out(store: ChdbStore) -> None:
    assert users(ask(store, "at_risk_vips")) == {"vip_active"}


def test_no_marketing_users_are_absent_from_every_shipped_audience_query(store: ChdbStore) -> None:
    """``--no-marketing`` users stay scored but no audience selects them (before: stage_audience,
    win_back_candidates and transitions_since filtered only opt-outs)."""
    refused = ["vip_dormant", "new_user", "regular_churned"]
    set_consent(store, refused, False, "test", marketing=False)
    epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    picked: set[str] = set()
    for stage in STAGES:
        picked |= users(ask(store, "stage_audience", stage=stage))
    picked |= users(ask(store, "win_back_candidates"))
    picked |= users(ask(store, "transitions_since", since=epoch, until=dt.datetime.now(dt.UTC)))
    queue = ask(store, "action_queue", action="", max_age_hours=24 * 365, limit=1000)
    picked |= users(queue)
    assert picked and not picked & set(refused)
    assert users(ask(store, "stage_audience", stage="growing")) == {"busy", "regular_active"}  # the rest stay
    scored = store.query("SELECT user_id FROM user_scores FINAL").column("user_id").to_pylist()
    assert set(refused) <= set(scored)  # still scored: marketing consent is not an opt-out


def _expected_transitions() -> set[tuple[str, str, str]]:
    path = {
        "busy": ["growing"],
        "vip_dormant": ["growing", "dormant"],
        "regular_churned": ["growing", "dormant", "churned"],
        "unsub_regular": ["growing", "churned"],
        "potential_dormant": ["growing", "dormant"],
        "vip_active": ["growing", "mature"],
        "regular_active": ["growing"],
        "new_user": ["new"],
    }
    return {(u, a, b) for u, p in path.items() for a, b in zip(["none", *p], p, strict=False)}


def test_transitions_since_pulls_each_transition_once_and_then_only_newer_ones(store_dir: Path, tmp_path: Path) -> None:
    epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    store = ChdbStore(store_dir)
    try:
        cursor = dt.datetime.now(dt.UTC)
        first = ask(store, "transitions_since", since=epoch, until=cursor)
        assert ask(store, "transitions_since", since=cursor, until=cursor + dt.timedelta(hours=1)) == []
    finally:
        store.close()
    assert Counter((r["user_id"], r["from_stage"], r["to_stage"]) for r in first) == Counter(_expected_transitions())

    # more events arrive later (a second run: two new users), written after the cursor
    later = tmp_path / "later.jsonl"
    t = T0 + 61 * D
    later.write_bytes(
        line(event_id="l1", user_id="late_a", ts=t, type="register")
        + b"\n"
        + line(event_id="l2", user_id="late_b", ts=t + 1, type="order", amount=10.0)
        + b"\n"
        # a later event closes their tick (the last, open tick of a load is scored provisionally, without
        # transitions: docs/event-time.md); its own user stays in the open tick
        + line(event_id="l3", user_id="late_clock", ts=t + 2 * 3_600_000, type="page_view")
        + b"\n"
    )
    run(later, store_dir)
    store = ChdbStore(store_dir)
    try:
        second = ask(store, "transitions_since", since=cursor, until=dt.datetime.now(dt.UTC))
    finally:
        store.close()
    assert sorted((r["user_id"], r["from_stage"], r["to_stage"]) for r in second) == [
        ("late_a", "none", "new"),
        ("late_b", "none", "growing"),
    ]


def test_stage_funnel_counts_users_per_stage_at_each_day_end(store: ChdbStore) -> None:
    tz = ZoneInfo("Asia/Shanghai")
    start = dt.datetime.fromtimestamp(T0 / 1000, tz).date()
    end = start + dt.timedelta(days=61)
    got = ask(store, "stage_funnel", start=start, end=end, tz="Asia/Shanghai")
    assert len(got) == 62 * len(STAGES)  # every stage on every day, also unchanged ones
    by_day = {(r["day"], r["stage"]): r for r in got}

    # oracle: replay the written transitions day by day
    trans = store.query("SELECT DISTINCT user_id, from_stage, to_stage, at FROM stage_transitions").to_pylist()
    for day in (start + dt.timedelta(days=k) for k in range(62)):
        for stage in STAGES:
            ins = [t for t in trans if t["to_stage"] == stage and t["at"].astimezone(tz).date() <= day]
            outs = [t for t in trans if t["from_stage"] == stage and t["at"].astimezone(tz).date() <= day]
            today = [t for t in ins if t["at"].astimezone(tz).date() == day]
            row = by_day[(day, stage)]
            assert (row["users"], row["entered"]) == (len(ins) - len(outs), len(today)), (day, stage)

    for day in (start + dt.timedelta(days=k) for k in range(62)):  # every user is in exactly one stage
        seen = {t["user_id"] for t in trans if t["from_stage"] == "none" and t["at"].astimezone(tz).date() <= day}
        assert sum(by_day[(day, s)]["users"] for s in STAGES) == len(seen), day
    final = Counter(s for s, _ in EXPECTED.values())
    assert {s: by_day[(end, s)]["users"] for s in STAGES} == {s: final[s] for s in STAGES}


def _rows_of(store: ChdbStore, user: str) -> dict[str, int]:
    out = {}
    for table in ("user_scores", "score_history", "stage_transitions", "consent", "rejected_events", "action_exports"):
        q = f"SELECT count() AS n FROM {table} WHERE user_id = {{u:String}}"
        out[table] = int(store.query(q, params={"u": user}).column("n")[0].as_py())
    return out


def test_forget_removes_the_user_from_every_table_and_logs_only_a_hash(store: ChdbStore) -> None:
    set_consent(store, ["vip_dormant"], False, "test")  # a consent row to erase as well
    store.query(  # and an exported action
        "INSERT INTO action_exports (user_id, action, action_at) "
        "SELECT user_id, action, assumeNotNull(action_at) FROM user_scores FINAL WHERE user_id = 'vip_dormant'"
    )
    before = _rows_of(store, "vip_dormant")
    assert all(before.values()), before  # the user is in every table, dead letters included
    others = store.query("SELECT count() AS n FROM user_scores WHERE user_id != 'vip_dormant'").to_pylist()

    counts = forget_user(store, "vip_dormant", reason="ticket 42", salt=SALT)

    assert counts == before
    assert _rows_of(store, "vip_dormant") == dict.fromkeys(before, 0)
    assert store.query("SELECT count() AS n FROM rejected_events WHERE position(payload, 'vip_dormant') > 0")[
        "n"
    ].to_pylist() == [0]
    assert store.query("SELECT count() AS n FROM user_scores WHERE user_id != 'vip_dormant'").to_pylist() == others
    log = store.query("SELECT user_hash, reason, rows_deleted FROM erasure_log").to_pylist()
    want = {"user_hash": user_hash("vip_dormant", SALT), "reason": "ticket 42", "rows_deleted": list(counts.items())}
    assert log == [want]
    everything = store.query("SELECT toString(tuple(*)) AS r FROM erasure_log").column("r").to_pylist()
    assert all("vip_dormant" not in r for r in everything)  # the log never holds the id
    assert erased_user_hashes(store) == {user_hash("vip_dormant", SALT)}
    assert "vip_dormant" not in users(ask(store, "win_back_candidates"))


def test_forgetting_a_user_whose_id_is_another_fields_value_deletes_nobody_elses_dead_letters(
    store: ChdbStore,
) -> None:
    """Every crafted event has ``"channel":"wecom"``: a user named ``wecom`` owns none of those dead letters."""
    broken = '{"event_id":"x1","user_id":"wecom","ts":oops'  # too broken to extract user_id: still theirs
    store.query(
        "INSERT INTO rejected_events (received_at, reason, detail, source, partition, offset, payload) "
        "VALUES (now64(3), 'invalid_json', '', 'test', 0, 999, {p:String})",
        params={"p": broken},
    )
    before = store.query("SELECT count() AS n FROM rejected_events")["n"].to_pylist()[0]
    assert store.query("SELECT count() AS n FROM rejected_events WHERE position(payload, '\"wecom\"') > 0")[
        "n"
    ].to_pylist()[0] >= 2  # the crafted dead letter and the broken one both hold the string

    counts = forget_user(store, "wecom", reason="request", salt=SALT)

    assert counts["rejected_events"] == 1  # the broken payload's user_id field, nothing else
    assert store.query("SELECT count() AS n FROM rejected_events")["n"].to_pylist()[0] == before - 1


def test_a_cluster_name_that_is_not_a_name_is_refused_before_anything_is_deleted(store: ChdbStore) -> None:
    before = _rows_of(store, "vip_dormant")
    with pytest.raises(ValueError, match="cluster name"):
        forget_user(store, "vip_dormant", reason="x", salt=SALT, on_cluster="c' SETTINGS mutations_sync=0 --")
    assert _rows_of(store, "vip_dormant") == before


def test_forget_of_an_unknown_user_changes_nothing_but_is_logged(store: ChdbStore) -> None:
    total = store.query("SELECT count() AS n FROM stage_transitions").to_pylist()
    assert set(forget_user(store, "nobody", reason="request", salt=SALT).values()) == {0}
    assert store.query("SELECT count() AS n FROM stage_transitions").to_pylist() == total
    assert store.query("SELECT count() AS n FROM erasure_log").column("n").to_pylist() == [1]
    with pytest.raises(ValueError, match="non-empty user id"):
        forget_user(store, " ", reason="x", salt=SALT)  # would match every dead letter without a user id


def test_an_opted_out_users_row_loses_its_action(store: ChdbStore) -> None:
    q = "SELECT user_id, action, action_at FROM user_scores FINAL WHERE user_id = {u:String}"
    assert store.query(q, params={"u": "vip_active"}).to_pylist()[0]["action"] != "none"  # the twin acts
    before = store.query(q, params={"u": "regular_active"}).to_pylist()[0]
    set_consent(store, ["vip_active", "nobody_at_all"], True, "crm")
    row = store.query(q, params={"u": "vip_active"}).to_pylist()[0]
    assert (row["action"], row["action_at"]) == ("none", None)
    assert store.query(q, params={"u": "regular_active"}).to_pylist()[0] == before  # others keep theirs


def test_latest_consent_decides_and_opting_back_in_restores_audiences(store: ChdbStore) -> None:
    assert opted_out_users(store) == frozenset(OPTED_OUT)
    set_consent(store, ["vip_dormant_optout"], False, "crm", now=lambda: 4_000_000_000.0)
    assert opted_out_users(store) == {"vip_active_optout"}
    assert "vip_dormant_optout" in users(ask(store, "win_back_candidates"))


def test_admin_commands_migrate_record_consent_and_forget(
    store_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.cli.db import register

    monkeypatch.setenv("LIFECYCLE_ERASURE_SALT", SALT.decode())
    parser = argparse.ArgumentParser(prog="lifecycle")
    register(parser.add_subparsers(dest="cmd", required=True))

    def call(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        code: int = args.func(args)
        return code

    url = f"chdb://{store_dir}"
    assert call("db", "migrate", "--store", url) == 0
    assert "applied 0 migration(s)" in capsys.readouterr().out
    assert call("consent", "--user", "busy", "--user", "new_user", "--opt-out", "--store", url) == 0
    # the pipeline's state (beside the store) is erased too, under the taxonomy the pipeline ran with
    taxonomy = str(taxonomy_variant(store_dir.parent / "taxonomy", at_risk_threshold=0.0))
    assert call("forget", "--user", "regular_active", "--reason", "ticket 7", "--store", url) == 3  # another one
    assert call(
        "forget", "--user", "regular_active", "--reason", "ticket 7", "--store", url, "--taxonomy", taxonomy
    ) == 0
    out = capsys.readouterr().out
    assert "regular_active" not in out  # only the hash is printed
    assert json.loads(out.splitlines()[-1])["user_hash"] == user_hash("regular_active", SALT)
    assert call("forget", "--user", "", "--store", url) == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["consent", "--user", "x", "--opt-out", "--opt-in"])

    store = ChdbStore(store_dir)
    try:
        assert opted_out_users(store) == {*OPTED_OUT, "busy", "new_user"}
        assert "regular_active" not in users(store.query("SELECT user_id FROM user_scores FINAL").to_pylist())
    finally:
        store.close()
