"""HttpStore (clickhouse-connect, unchanged production code) against the real ClickHouse engine over HTTP.

The engine is chDB served by :class:`tests.support.chdb_http.ChdbHttpServer`
behind ClickHouse's HTTP interface, one server and data directory per test.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from pipelines.io.store.base import StoreError
from pipelines.io.store.http import HttpStore
from pipelines.io.store.migrations import migrate
from pipelines.settings import DEFAULT_SQL, Settings
from tests.support.chdb_http import ChdbHttpServer

pytestmark = pytest.mark.integration

_TS = pa.timestamp("ms", tz="UTC")
SCORE_COLUMNS = (
    "user_id, stage, tier, at_risk, churn_risk, purchase_propensity, reasons, model_version, "
    "last_event_at, scored_at, version"
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ChdbHttpServer]:
    with ChdbHttpServer(tmp_path / "chdb") as srv:
        yield srv


@pytest.fixture
def store(server: ChdbHttpServer) -> Iterator[HttpStore]:
    st = HttpStore(server.url)
    migrate(st, DEFAULT_SQL)
    try:
        yield st
    finally:
        st.close()


def score_rows(users: list[str], *, version: int, stage: str = "growing", risk: float = 0.25) -> pa.Table:
    """``user_scores`` rows (every column but the defaulted ``is_deleted``) with the pipeline's Arrow types."""
    n = len(users)
    at = dt.datetime(2026, 10, 5, 12, 30, 15, 123000, tzinfo=dt.UTC)
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "stage": pa.array([stage] * n, pa.string()),
            "tier": pa.array(["vip" if i % 3 == 0 else "regular" for i in range(n)], pa.string()),
            "at_risk": pa.array([i % 2 == 1 for i in range(n)], pa.bool_()),
            "churn_risk": pa.array([risk + i / 1024 for i in range(n)], pa.float32()),
            "purchase_propensity": pa.array([0.1 + i / 7 % 0.9 for i in range(n)], pa.float32()),
            "reasons": pa.array([["silent_7d", "no_order_30d"][: i % 3] for i in range(n)], pa.list_(pa.string())),
            "model_version": pa.array(["lsm-test-1"] * n, pa.string()),
            "last_event_at": pa.array([at - dt.timedelta(minutes=i) for i in range(n)], _TS),
            "scored_at": pa.array([at + dt.timedelta(milliseconds=version)] * n, _TS),
            "version": pa.array([version] * n, pa.uint64()),
        }
    )


def test_http_store_migrates_and_round_trips_scores(store: HttpStore) -> None:
    tables = store.query("SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name")
    assert tables.column("name").to_pylist() == [
        "action_exports", "consent", "erasure_log", "marketing_refused", "model_versions", "rejected_events",
        "schema_migrations", "score_history", "score_history_mv", "stage_transitions", "suppressed", "user_scores",
    ]  # fmt: skip
    assert migrate(store, DEFAULT_SQL) == [p.name for p in sorted(DEFAULT_SQL.glob("*.sql"))]  # idempotent

    sent = score_rows([f"u{i:04d}" for i in range(500)] + ["ü-unicode ✓", ""], version=1_760_000_000_000)
    store.insert("user_scores", sent)
    got = store.query(f"SELECT {SCORE_COLUMNS} FROM user_scores FINAL ORDER BY user_id")

    assert got.column_names == sent.column_names
    expected = sent.sort_by("user_id")
    for name in sent.column_names:  # exact values, float32 included (both sides widen the same float32)
        assert got.column(name).to_pylist() == expected.column(name).to_pylist(), name
    assert got.schema.field("last_event_at").type == _TS
    assert got.schema.field("churn_risk").type == pa.float32()
    assert store.query("SELECT sum(is_deleted) AS d FROM user_scores").column("d").to_pylist() == [0]


def test_replayed_insert_leaves_one_row_per_user_under_final(store: HttpStore) -> None:
    users = [f"user-{i}" for i in range(100)]
    block = score_rows(users, version=1_000)
    store.insert("user_scores", block)
    store.insert("user_scores", block)  # a replay after a crash
    store.insert("user_scores", score_rows(["user-42"], version=2_000, stage="dormant", risk=0.9))

    raw = store.query("SELECT count() AS n FROM user_scores").column("n").to_pylist()
    assert raw == [101]  # the replayed block is dropped by its deduplication token; FINAL collapses the rest
    final = store.query("SELECT user_id, stage, version FROM user_scores FINAL ORDER BY user_id")
    assert final.num_rows == len(users)
    assert sorted(final.column("user_id").to_pylist()) == sorted(users)
    rows = {r["user_id"]: (r["stage"], r["version"]) for r in final.to_pylist()}
    assert rows["user-42"] == ("dormant", 2_000)
    assert all(v == ("growing", 1_000) for u, v in rows.items() if u != "user-42")


def test_server_error_surfaces_as_store_error(store: HttpStore) -> None:
    with pytest.raises(StoreError, match=r"UNKNOWN_TABLE|Unknown table") as err:
        store.query("SELECT * FROM no_such_table")
    assert "Code: 60" in str(err.value)
    with pytest.raises(StoreError, match="SYNTAX_ERROR"):
        store.command("CREATE TABLE broken (")
    bad = score_rows(["x"], version=1).drop_columns(["user_id"]).append_column("no_such_column", pa.array([1]))
    with pytest.raises(StoreError, match="user_scores") as ins_err:
        store.insert("user_scores", bad)
    assert "no_such_column" in str(ins_err.value)
    # the connection and server survive errors
    assert store.query("SELECT count() AS n FROM user_scores").column("n").to_pylist() == [0]


def test_pipeline_writes_through_http_store(server: ChdbHttpServer) -> None:
    from pipelines.flow.runner import run_pipeline
    from pipelines.offline.simulate import SimConfig, simulate

    s = Settings(input="simulate", sim_users=300, sim_days=10, store=server.url, metrics_port=0, shards=2)
    assert SimConfig().seed == s.sim_seed  # the comparison below simulates with the same seed the run used
    result = run_pipeline(s, serve_metrics=False, registry=CollectorRegistry())
    assert result.events_in == result.expected_events

    seen = simulate(SimConfig(users=s.sim_users, days=s.sim_days, seed=s.sim_seed)).events["user_id"].n_unique()
    store = HttpStore(server.url)
    try:
        counts = store.query("SELECT count() AS rows, uniqExact(user_id) AS users FROM user_scores FINAL").to_pylist()
        written = store.query("SELECT count() AS n FROM user_scores").column("n").to_pylist()[0]
    finally:
        store.close()
    assert counts == [{"rows": seen, "users": seen}]
    assert written == result.rows_written["user_scores"] >= seen


# --------------------------------------------------------------------------- the served engine is as strict as a server


def test_the_test_server_refuses_an_unknown_setting_with_code_115(server: ChdbHttpServer) -> None:
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import DatabaseError

    client = clickhouse_connect.get_client(host=server.host, port=server.port)
    try:
        with pytest.raises(DatabaseError, match="UNKNOWN_SETTING") as err:
            client.command("SELECT 1", settings={"optimise_on_insert": 0})  # misspelt: a server refuses it
        assert err.value.code == 115
        assert client.command("SELECT 1", settings={"optimize_on_insert": 0}) == 1
    finally:
        client.close()


def test_a_wrong_password_is_refused_at_once_in_one_line_without_the_password(tmp_path: Path) -> None:
    with ChdbHttpServer(tmp_path / "chdb", users={"writer": "right-secret"}) as srv:
        ok = HttpStore(srv.url, user="writer", password="right-secret")
        ok.close()
        waits: list[float] = []
        with pytest.raises(StoreError) as err:
            HttpStore(srv.url, user="writer", password="wrong-secret", sleep=waits.append)
        assert err.value.transient is False  # the sink raises it at once instead of waiting out an "outage"
        text = str(err.value)
        assert "516" in text and "AUTHENTICATION_FAILED" in text
        assert "\n" not in text and "secret" not in text
        assert waits == [] and srv.log and {r.user for r in srv.log} == {"writer"}


def test_two_clients_run_side_by_side_in_their_own_sessions(server: ChdbHttpServer) -> None:
    import threading
    import time

    a, b = HttpStore(server.url), HttpStore(server.url)
    try:
        t0 = time.monotonic()
        threads = [threading.Thread(target=s.query, args=("SELECT sleep(1)",)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.monotonic() - t0 < 1.8  # one global lock would take 2 s
        assert len({r.session_id for r in server.log} - {""}) == 2
    finally:
        a.close()
        b.close()


def test_an_async_insert_without_waiting_is_acknowledged_before_it_is_applied(
    server: ChdbHttpServer, store: HttpStore
) -> None:
    import clickhouse_connect

    client = clickhouse_connect.get_client(host=server.host, port=server.port)
    try:
        rows = score_rows(["a", "b"], version=1)
        client.insert_arrow("user_scores", rows, settings={"async_insert": 1, "wait_for_async_insert": 0})
        assert int(store.query("SELECT count() AS n FROM user_scores").column("n")[0].as_py()) == 0
        server.flush_async_inserts()
        assert int(store.query("SELECT count() AS n FROM user_scores").column("n")[0].as_py()) == 2
    finally:
        client.close()


def test_async_mode_waits_for_the_flush_and_deduplicates(server: ChdbHttpServer) -> None:
    store = HttpStore(server.url, async_insert=True)
    try:
        migrate(store, DEFAULT_SQL)
        store.insert("user_scores", score_rows(["a", "b", "c"], version=5))
        assert int(store.query("SELECT count() AS n FROM user_scores").column("n")[0].as_py()) == 3  # on return
        sent = [r.settings for r in server.log if r.table == "user_scores"]
        assert [(s["async_insert"], s["wait_for_async_insert"], s["async_insert_deduplicate"]) for s in sent] == [
            ("1", "1", "1")
        ]
    finally:
        store.close()
