"""The real flow (Bytewax, chDB, torch) on small inputs: what downstream readers see."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipelines.core.defaults import STAGES
from pipelines.flow.runner import RunResult, run_pipeline
from pipelines.io.store.chdb import ChdbStore
from pipelines.io.store.migrations import migrate
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import write_jsonl
from pipelines.settings import Settings
from tests.support.events import T0, line

D = 86_400_000


def _run(tmp_path: Path, **over: object) -> RunResult:
    opts: dict[str, object] = {"metrics_port": 0, "shards": 3, "batch_events": 2000, **over}
    s = Settings(store=f"chdb://{tmp_path}/store.chdb", **opts)
    return run_pipeline(s, registry=CollectorRegistry(), serve_metrics=False)


def _query(tmp_path: Path, sql: str) -> list[dict]:
    store = ChdbStore(tmp_path / "store.chdb")
    try:
        return store.query(sql).to_pylist()
    finally:
        store.close()


def test_flow_on_simulated_stream_writes_exactly_one_latest_score_per_user(tmp_path: Path) -> None:
    res = _run(tmp_path, input="simulate", sim_users=600, sim_days=14)
    sim = simulate(SimConfig(users=600, days=14))
    users = sim.events["user_id"].n_unique()
    assert res.events_in == sim.events.height == res.events_applied
    rows = _query(
        tmp_path,
        "SELECT user_id, stage, tier, churn_risk, purchase_propensity, reasons, model_version, "
        "version FROM user_scores FINAL",
    )
    assert len(rows) == users == len({r["user_id"] for r in rows})
    assert {r["stage"] for r in rows} <= set(STAGES)
    assert all(0.0 <= r["churn_risk"] <= 1.0 and 0.0 <= r["purchase_propensity"] <= 1.0 for r in rows)
    assert all(r["model_version"] == "lsm-default-1" for r in rows)
    assert sum(1 for r in rows if r["reasons"]) > 0.5 * users
    # FINAL holds each user's newest version: no older row of the user outranks it
    newest = _query(tmp_path, "SELECT user_id, max(version) AS v FROM user_scores GROUP BY user_id")
    assert {r["user_id"]: r["v"] for r in newest} == {r["user_id"]: r["version"] for r in rows}


def test_replaying_the_same_input_leaves_final_unchanged(tmp_path: Path) -> None:
    sql = "SELECT user_id, stage, churn_risk, version FROM user_scores FINAL ORDER BY user_id"
    _run(tmp_path, input="simulate", sim_users=300, sim_days=10)
    first = _query(tmp_path, sql)
    _run(tmp_path, input="simulate", sim_users=300, sim_days=10)
    assert _query(tmp_path, sql) == first
    assert _query(tmp_path, "SELECT count() AS n FROM stage_transitions FINAL") == _query(
        tmp_path, "SELECT count() AS n FROM (SELECT DISTINCT user_id, to_stage, at FROM stage_transitions)"
    )


def test_bad_lines_in_a_file_become_dead_letters_with_file_and_line(tmp_path: Path) -> None:
    sim = simulate(SimConfig(users=200, days=7))
    path = tmp_path / "events.jsonl"
    write_jsonl(sim.events, path)
    good = path.read_bytes().splitlines()
    bad = [b"{not json", line(type="teleport", user_id="x1"), line(type="order", amount=-1.0, user_id="x2")]
    mixed = good[:100] + [bad[0]] + good[100:200] + [bad[1], bad[2]] + good[200:] + [b""]
    path.write_bytes(b"\n".join(mixed) + b"\n")
    res = _run(tmp_path, input=str(path))
    assert res.events_in == len(good) + 3
    assert res.events_applied + sum(res.rejected.values()) == res.events_in
    assert res.rejected == {"malformed_json": 1, "unknown_event_type": 1, "negative_amount": 1}
    rej = _query(
        tmp_path, "SELECT reason, source, offset, hex(payload) AS payload FROM rejected_events FINAL ORDER BY offset"
    )
    assert [(r["reason"], r["offset"]) for r in rej] == [
        ("malformed_json", 101),
        ("unknown_event_type", 202),
        ("negative_amount", 203),
    ]
    assert all(r["source"] == str(path) for r in rej)
    assert [bytes.fromhex(r["payload"]) for r in rej] == bad  # original bytes, unchanged
    n_users = _query(tmp_path, "SELECT count() AS n FROM user_scores FINAL")[0]["n"]
    assert n_users == sim.events["user_id"].n_unique()


def test_silent_user_reaches_dormant_then_churned_in_the_store_without_new_events(tmp_path: Path) -> None:
    path = tmp_path / "silence.jsonl"
    events = [line(event_id="s0", user_id="silent", ts=T0, type="order", amount=99.0)]
    events += [line(event_id=f"b{d}", user_id="busy", ts=T0 + d * D // 4) for d in range(1, 4 * 60)]
    path.write_bytes(b"\n".join(events) + b"\n")
    _run(tmp_path, input=str(path), batch_events=10)
    final = _query(tmp_path, "SELECT stage, reasons FROM user_scores FINAL WHERE user_id = 'silent'")
    assert final[0]["stage"] == "churned"
    trans = _query(
        tmp_path, "SELECT from_stage, to_stage FROM stage_transitions FINAL WHERE user_id = 'silent' ORDER BY at"
    )
    assert [(t["from_stage"], t["to_stage"]) for t in trans] == [
        ("none", "growing"),
        ("growing", "dormant"),
        ("dormant", "churned"),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_endpoint_serves_the_run_counters(tmp_path: Path) -> None:
    port = _free_port()
    s = Settings(store=f"chdb://{tmp_path}/store.chdb", metrics_port=port, input="simulate", sim_users=100, sim_days=5)
    res = run_pipeline(s, registry=CollectorRegistry())
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in body.splitlines() if ln and not ln.startswith("#")}
    assert values['lifecycle_events_in_total{source="simulate"}'] == res.events_in > 0
    assert values['lifecycle_rows_written_total{table="user_scores"}'] > 0
    assert values["lifecycle_scoring_seconds_count"] > 0
    assert "lifecycle_model_info{schema=" in body
    assert "user_id=" not in body  # never a user id in a label


def test_unknown_store_scheme_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="chdb://PATH or http"):
        Settings(store="mysql://x")


def test_retried_events_are_counted_as_duplicates_and_change_no_score(tmp_path: Path) -> None:
    sim = simulate(SimConfig(users=150, days=5))
    clean, retried = tmp_path / "clean", tmp_path / "retried"
    clean.mkdir()
    retried.mkdir()
    write_jsonl(sim.events, clean / "e.jsonl")
    lines = (clean / "e.jsonl").read_bytes().splitlines()
    # producer retries, re-sent soon after the originals (well within the allowed lateness)
    with_retries = lines[:300] + lines[290:300] + lines[300:] + lines[-20:]
    (retried / "e.jsonl").write_bytes(b"\n".join(with_retries) + b"\n")
    sql = "SELECT user_id, stage, churn_risk, purchase_propensity, version FROM user_scores FINAL ORDER BY user_id"
    _run(clean, input=str(clean / "e.jsonl"))
    res = _run(retried, input=str(retried / "e.jsonl"))
    assert res.duplicates == 30 and not res.rejected
    assert res.events_in == res.events_applied + res.duplicates + sum(res.rejected.values())
    assert _query(retried, sql) == _query(clean, sql)


def test_opted_out_users_are_neither_scored_nor_written(tmp_path: Path) -> None:
    from pipelines.privacy.erasure import set_consent

    store = ChdbStore(tmp_path / "store.chdb")
    try:
        migrate(store, Settings().sql_dir)
        set_consent(store, ["refuser"], opted_out=True, source="test")
    finally:
        store.close()
    path = tmp_path / "consent.jsonl"
    events = [line(event_id=f"r{i}", user_id="refuser", ts=T0 + i) for i in range(5)]
    events += [line(event_id=f"k{i}", user_id="keeper", ts=T0 + i) for i in range(3)]
    path.write_bytes(b"\n".join(events) + b"\n")
    res = _run(tmp_path, input=str(path))
    assert res.opted_out == 5 and res.events_applied == 3
    assert res.events_in == res.events_applied + res.opted_out + res.duplicates + sum(res.rejected.values())
    users = _query(tmp_path, "SELECT user_id FROM user_scores FINAL")
    assert [u["user_id"] for u in users] == ["keeper"]
