"""Both store backends against the real engine: replay idempotence, retries, deduplication tokens, async inserts.

The clickhouse-connect backend (:class:`HttpStore`, production code unchanged)
talks to chDB served behind ClickHouse's HTTP interface
(:class:`tests.support.chdb_http.ChdbHttpServer`); a subclass of that server
injects failures (before or after the insert commits) to prove the retry and
deduplication behaviour over a real socket.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.io.store.base import Store, StoreError, arrow_stream, dedup_token
from pipelines.io.store.chdb import ChdbStore
from pipelines.io.store.http import HttpStore
from pipelines.io.store.migrations import migrate
from pipelines.settings import DEFAULT_SQL
from tests.support.chdb_http import ChdbHttpServer, ServerError

pytestmark = pytest.mark.integration

_TS = pa.timestamp("ms", tz="UTC")
T = dt.datetime(2026, 10, 5, 12, 30, tzinfo=dt.UTC)
V = 1_790_000_000_000  # versions are event-time clocks in ms (2026-09-21): score_history's TTL keeps 400 days


def score_rows(users: list[str], *, version: int, stage: str = "growing") -> pa.Table:
    """``user_scores`` rows with the Arrow types pipelines/core/rows.py writes."""
    n = len(users)
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "stage": pa.array([stage] * n, pa.string()),
            "tier": pa.array(["vip" if i % 3 == 0 else "regular" for i in range(n)], pa.string()),
            "at_risk": pa.array([i % 2 == 1 for i in range(n)], pa.bool_()),
            "churn_risk": pa.array([i / (n + 1) for i in range(n)], pa.float32()),
            "purchase_propensity": pa.array([1 - i / (n + 1) for i in range(n)], pa.float32()),
            "reasons": pa.array([["no activity for 21 days"][: i % 2] for i in range(n)], pa.list_(pa.string())),
            "model_version": pa.array(["lsm-test-1"] * n, pa.string()),
            "last_event_at": pa.array([T - dt.timedelta(minutes=i) for i in range(n)], _TS),
            "scored_at": pa.array([T + dt.timedelta(milliseconds=version)] * n, _TS),
            "version": pa.array([V + version] * n, pa.uint64()),
        }
    )


class FlakyServer(ChdbHttpServer):
    """The served engine, failing the first ``fail`` INSERTs with ClickHouse error ``code``.

    ``after_commit``: the insert is committed first and *then* answered with an
    error - the response was lost, the client cannot know the rows are in.
    Records the settings each INSERT arrived with.
    """

    def __init__(self, path: Path, *, code: int = 252, after_commit: bool = False) -> None:
        super().__init__(path)
        self.fail = 0
        self.code = code
        self.after_commit = after_commit
        self.inserts: list[dict[str, str]] = []

    def __enter__(self) -> FlakyServer:
        self.start()
        return self

    def arm(self, fail: int) -> None:
        """Fail the next ``fail`` INSERTs (the migrations before this ran unharmed)."""
        self.fail = fail
        self.inserts.clear()

    def execute(self, params: dict[str, str], body: bytes, query_id: str) -> tuple[bytes, dict[str, str]]:
        if not body.lstrip()[:6].upper().startswith(b"INSERT"):
            return super().execute(params, body, query_id)
        self.inserts.append(dict(params))
        failing = len(self.inserts) <= self.fail
        if failing and not self.after_commit:
            raise ServerError(self.code, "Too many parts (3000) in all partitions in total", "TOO_MANY_PARTS")
        out = super().execute(params, body, query_id)
        if failing:
            raise ServerError(self.code, "Unknown status of insert: the connection to Keeper was lost", "UNKNOWN")
        return out


@pytest.fixture(params=["chdb", "http"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated store of each kind, each on its own data directory."""
    if request.param == "chdb":
        store: Store = ChdbStore(tmp_path / "store.chdb")
        try:
            migrate(store, DEFAULT_SQL)
            yield store
        finally:
            store.close()
        return
    with ChdbHttpServer(tmp_path / "served") as srv:
        store = HttpStore(srv.url)
        try:
            migrate(store, DEFAULT_SQL)
            yield store
        finally:
            store.close()


def _final(store: Store) -> list[dict]:
    return store.query("SELECT user_id, stage, version, churn_risk FROM user_scores FINAL ORDER BY user_id").to_pylist()


def _count(store: Store, table: str) -> int:
    return int(store.query(f"SELECT count() AS n FROM {table}").column("n")[0].as_py())


def test_replaying_the_same_batches_twice_leaves_final_unchanged(backend: Store) -> None:
    old = score_rows([f"u{i:03d}" for i in range(100)], version=1_000)
    new = score_rows([f"u{i:03d}" for i in range(50, 150)], version=2_000, stage="dormant")
    backend.insert("user_scores", old)
    backend.insert("user_scores", new)
    first = _final(backend)
    raw = _count(backend, "user_scores")

    for batch in (old, new, new, old):  # a replay, in order and out of order
        backend.insert("user_scores", batch)

    assert _final(backend) == first
    assert len(first) == 150 == len({r["user_id"] for r in first})  # one row per user ...
    newest = {f"u{i:03d}": 1_000 if i < 50 else 2_000 for i in range(150)}
    assert {r["user_id"]: r["version"] - V for r in first} == newest
    assert _count(backend, "user_scores") == raw  # ... and the replayed blocks were dropped, not just collapsed
    history = backend.query("SELECT count() AS n, uniqExact(user_id, version) AS k FROM score_history FINAL")
    assert history.to_pylist() == [{"n": 200, "k": 200}]  # every (user, version) once in the history


def test_query_parameters_bind_the_same_on_both_backends(backend: Store) -> None:
    params = {
        "s": "tab\there, quote ' and back\\slash ✓",
        "a": ["a", "b'c", ""],
        "t": dt.datetime(2026, 10, 1, 20, 0, 0, 123000, tzinfo=dt.timezone(dt.timedelta(hours=8))),
        "d": dt.date(2026, 10, 1),
        "b": True,
        "n": 42,
    }
    got = backend.query(
        "SELECT {s:String} AS s, {a:Array(String)} AS a, {t:DateTime64(3, 'UTC')} AS t, {d:Date} AS d, "
        "{b:Bool} AS b, {n:UInt32} AS n",
        params=params,
    ).to_pylist()
    assert got == [{**params, "t": dt.datetime(2026, 10, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)}]


def test_clickhouse_connect_round_trip_against_the_served_engine(tmp_path: Path) -> None:
    with ChdbHttpServer(tmp_path / "served") as srv:
        store = HttpStore(srv.url)
        try:
            migrate(store, DEFAULT_SQL)
            sent = score_rows([f"u{i}" for i in range(300)] + ["ü-unicode ✓", ""], version=60_000)
            store.insert("user_scores", sent)
            got = store.query(f"SELECT {', '.join(sent.column_names)} FROM user_scores FINAL ORDER BY user_id")
            assert got.to_pylist() == sent.sort_by("user_id").to_pylist()
            hist = store.query("SELECT user_id, at, version FROM score_history FINAL WHERE user_id = 'u7'").to_pylist()
            at = dt.datetime.fromtimestamp((V + 60_000) / 1000, dt.UTC)
            assert hist == [{"user_id": "u7", "at": at, "version": V + 60_000}]
        finally:
            store.close()


def test_insert_retried_after_transient_failures_lands_once(tmp_path: Path) -> None:
    waits: list[float] = []
    with FlakyServer(tmp_path / "served", code=252) as srv:
        store = HttpStore(srv.url, sleep=waits.append, backoff_seconds=0.1)
        try:
            migrate(store, DEFAULT_SQL)
            srv.arm(2)
            store.insert("user_scores", score_rows(["a", "b", "c"], version=7))
            assert waits == [0.1, 0.2]  # exponential backoff between the three attempts
            assert len(srv.inserts) == 3
            assert len({p["insert_deduplication_token"] for p in srv.inserts}) == 1  # one token for all attempts
            assert _count(store, "user_scores") == 3
        finally:
            store.close()


def test_retry_after_a_lost_response_is_dropped_by_the_deduplication_token(tmp_path: Path) -> None:
    with FlakyServer(tmp_path / "served", code=319, after_commit=True) as srv:
        store = HttpStore(srv.url, sleep=lambda s: None)
        try:
            migrate(store, DEFAULT_SQL)
            srv.arm(1)
            rows = score_rows([f"u{i}" for i in range(40)], version=9)
            store.insert("user_scores", rows)  # committed, answered with an error, retried
            assert len(srv.inserts) == 2
            # without FINAL: the second copy was never written (here and in the view's table)
            assert _count(store, "user_scores") == 40
            assert _count(store, "score_history") == 40
        finally:
            store.close()


def test_retries_are_bounded_and_then_raise_store_error(tmp_path: Path) -> None:
    waits: list[float] = []
    with FlakyServer(tmp_path / "served", code=252) as srv:
        store = HttpStore(srv.url, sleep=waits.append, retries=4, backoff_seconds=0.1, max_backoff_seconds=0.25)
        try:
            migrate(store, DEFAULT_SQL)
            srv.arm(10**6)
            with pytest.raises(StoreError, match=r"insert into user_scores \(1 rows\).*after 5 attempts.*252"):
                store.insert("user_scores", score_rows(["a"], version=1))
            assert len(srv.inserts) == 5
            assert waits == [0.1, 0.2, 0.25, 0.25]
        finally:
            store.close()


def test_permanent_errors_are_not_retried(tmp_path: Path) -> None:
    waits: list[float] = []
    with FlakyServer(tmp_path / "served") as srv:
        store = HttpStore(srv.url, sleep=waits.append)
        try:
            migrate(store, DEFAULT_SQL)
            srv.arm(0)
            bad = score_rows(["x"], version=1).append_column("no_such_column", pa.array([1]))
            with pytest.raises(StoreError, match="no_such_column"):
                store.insert("user_scores", bad)
            with pytest.raises(StoreError, match="UNKNOWN_TABLE|Unknown table"):
                store.query("SELECT * FROM no_such_table")
            assert waits == [] and len(srv.inserts) == 1
        finally:
            store.close()


def test_a_retry_refused_because_the_timed_out_insert_still_holds_its_session_is_retried(tmp_path: Path) -> None:
    # clickhouse-connect sends every request of a client in one session; a server runs one query per session,
    # so the retry of an insert that timed out on the client is refused (Code 373) while the first still runs
    with ChdbHttpServer(tmp_path / "served") as srv:
        store = HttpStore(srv.url, timeout_seconds=1, backoff_seconds=0.2)
        try:
            migrate(store, DEFAULT_SQL)
            srv.slow_down(2.5, count=1, inserts_only=True)
            store.insert("user_scores", score_rows(["a", "b", "c"], version=4))
            assert sum(1 for r in srv.log if r.table == "user_scores") >= 3  # timed out, refused (373), then taken
            assert _count(store, "user_scores") == 3
        finally:
            store.close()


def test_insert_survives_a_server_restart_between_attempts(tmp_path: Path) -> None:
    srv = ChdbHttpServer(tmp_path / "served").start()

    def restart(_: float) -> None:
        srv.start()

    store = HttpStore(srv.url, sleep=restart, backoff_seconds=0.01)
    try:
        migrate(store, DEFAULT_SQL)
        srv.stop()  # connection refused: a network error, retried; the wait restarts the server
        store.insert("user_scores", score_rows(["a", "b"], version=3))
        assert _count(store, "user_scores") == 2
    finally:
        store.close()
        srv.stop()


def test_async_insert_waits_for_the_flush(tmp_path: Path) -> None:
    with FlakyServer(tmp_path / "served") as srv:
        store = HttpStore(srv.url, async_insert=True)
        try:
            migrate(store, DEFAULT_SQL)
            srv.arm(0)
            store.insert("user_scores", score_rows(["a", "b", "c"], version=5))
            sent = srv.inserts[0]
            assert (sent["async_insert"], sent["wait_for_async_insert"]) == ("1", "1")
            assert _count(store, "user_scores") == 3  # visible on return: the insert waited for the flush
        finally:
            store.close()


def test_async_insert_retried_after_a_lost_response_lands_once(tmp_path: Path) -> None:
    # The served engine deduplicates an async insert only when asked to (async_insert_deduplicate=1), as the
    # servers before the unified deduplicate_insert do: without it the retry below wrote every row twice.
    with FlakyServer(tmp_path / "served", code=319, after_commit=True) as srv:
        store = HttpStore(srv.url, async_insert=True, sleep=lambda s: None)
        try:
            migrate(store, DEFAULT_SQL)
            srv.arm(1)
            store.insert("user_scores", score_rows([f"u{i}" for i in range(40)], version=9))
            assert len(srv.inserts) == 2
            assert _count(store, "user_scores") == 40  # raw rows, not FINAL
            assert _count(store, "score_history") == 40
        finally:
            store.close()


def test_deduplication_token_depends_on_table_and_content_only() -> None:
    a = score_rows(["a", "b"], version=1)
    same = score_rows(["a", "b"], version=1)
    assert dedup_token("user_scores", arrow_stream(a)) == dedup_token("user_scores", arrow_stream(same))
    assert dedup_token("user_scores", arrow_stream(a)) != dedup_token("score_history", arrow_stream(a))
    other = score_rows(["a", "b"], version=2)
    assert dedup_token("user_scores", arrow_stream(a)) != dedup_token("user_scores", arrow_stream(other))


def test_model_versions_register_the_artifact_behind_model_version(backend: Store) -> None:
    from pipelines.io.store.base import record_model_version
    from pipelines.scoring.scorer import DEFAULT_MODEL_DIR

    meta = json.loads((DEFAULT_MODEL_DIR / "artifact.json").read_text())
    record_model_version(backend, meta, now=lambda: 1_800_000_000.0)
    record_model_version(backend, meta, now=lambda: 1_800_000_100.0)  # a restart: newest registration wins
    got = backend.query("SELECT * FROM model_versions FINAL").to_pylist()
    assert len(got) == 1
    row = got[0]
    assert (row["model_version"], row["schema_hash"], row["horizon_days"]) == (
        meta["model_version"],
        meta["schema_hash"],
        meta["horizon_days"],
    )
    assert json.loads(row["metrics"]) == meta["metrics"]
    assert row["registered_at"] == dt.datetime.fromtimestamp(1_800_000_100, dt.UTC)
