"""The migration runner: ordered, idempotent, recorded, and strict about applied files (real chDB)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.io.store.chdb import ChdbStore
from pipelines.io.store.migrations import (
    MigrationError,
    applied_migrations,
    apply_migrations,
    checksum,
    discover,
    migrate,
)
from pipelines.settings import DEFAULT_SQL

ORIGINAL_COLUMNS = {  # what records.py writes: migrations may only add defaulted columns to these tables
    "user_scores": [
        "user_id",
        "stage",
        "tier",
        "at_risk",
        "churn_risk",
        "purchase_propensity",
        "reasons",
        "model_version",
        "last_event_at",
        "scored_at",
        "version",
        "is_deleted",
    ],
    "stage_transitions": [
        "user_id",
        "from_stage",
        "to_stage",
        "at",
        "churn_risk",
        "purchase_propensity",
        "reasons",
        "model_version",
        "version",
    ],
    "rejected_events": ["received_at", "reason", "detail", "source", "partition", "offset", "payload"],
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChdbStore]:
    st = ChdbStore(tmp_path / "store.chdb")
    try:
        yield st
    finally:
        st.close()


def _write(d: Path, files: dict[str, str]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def _tables(store: ChdbStore) -> list[str]:
    q = "SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name"
    return store.query(q).column("name").to_pylist()


def test_migrations_apply_in_number_order_once_and_are_recorded(store: ChdbStore, tmp_path: Path) -> None:
    # each file depends on the one before it: applied out of order, a statement would fail
    sql = _write(
        tmp_path / "sql",
        {
            "0002_b.sql": "CREATE TABLE IF NOT EXISTS b AS a;\nALTER TABLE b ADD COLUMN IF NOT EXISTS y UInt8;\n",
            "0001_a.sql": "-- first\nCREATE TABLE IF NOT EXISTS a (x UInt8) ENGINE = MergeTree ORDER BY x;\n",
            "0010_c.sql": "CREATE TABLE IF NOT EXISTS c AS b;",
        },
    )
    assert apply_migrations(store, sql) == ["0001_a.sql", "0002_b.sql", "0010_c.sql"]
    assert _tables(store) == ["a", "b", "c", "schema_migrations"]
    assert apply_migrations(store, sql) == []  # idempotent: nothing pending, nothing re-run
    rec = applied_migrations(store)
    assert rec == {m.name: m.checksum for m in discover(sql)}
    assert store.query("SELECT count() AS n FROM schema_migrations").column("n").to_pylist() == [3]

    (sql / "0011_d.sql").write_text("CREATE TABLE IF NOT EXISTS d AS c;\n")
    assert apply_migrations(store, sql) == ["0011_d.sql"]  # only the new file
    assert "d" in _tables(store)


def test_changed_checksum_of_an_applied_migration_is_refused_before_anything_runs(
    store: ChdbStore, tmp_path: Path
) -> None:
    sql = _write(tmp_path / "sql", {"0001_a.sql": "CREATE TABLE IF NOT EXISTS a (x UInt8) ENGINE = Log;\n"})
    apply_migrations(store, sql)
    (sql / "0001_a.sql").write_text("CREATE TABLE IF NOT EXISTS a (x UInt16) ENGINE = Log;\n")
    (sql / "0002_b.sql").write_text("CREATE TABLE IF NOT EXISTS b (x UInt8) ENGINE = Log;\n")
    with pytest.raises(MigrationError, match=r"0001_a\.sql was changed after it was applied"):
        apply_migrations(store, sql)
    assert "b" not in _tables(store)  # refused up front: the pending file did not run either


def test_line_endings_do_not_change_the_checksum(tmp_path: Path) -> None:
    assert checksum("CREATE TABLE a;\r\nSELECT 1;\r\n") == checksum("CREATE TABLE a;\nSELECT 1;\n")


def test_failed_migration_is_not_recorded_and_runs_again_once_fixed(store: ChdbStore, tmp_path: Path) -> None:
    sql = _write(
        tmp_path / "sql",
        {
            "0001_a.sql": "CREATE TABLE IF NOT EXISTS a (x UInt8) ENGINE = Log;\n",
            "0002_b.sql": "CREATE TABLE IF NOT EXISTS b (x UInt8) ENGINE = Log;\nCREATE TABLE broken (;\n",
        },
    )
    with pytest.raises(MigrationError, match=r"0002_b\.sql: statement 2 failed"):
        apply_migrations(store, sql)
    assert set(applied_migrations(store)) == {"0001_a.sql"}
    (sql / "0002_b.sql").write_text("CREATE TABLE IF NOT EXISTS b (x UInt8) ENGINE = Log;\n")  # never applied: editable
    assert apply_migrations(store, sql) == ["0002_b.sql"]


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"0001_a.sql": "SELECT 1;", "2_b.sql": "SELECT 1;"}, "not a migration name"),
        ({"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 1;"}, "numbers used twice"),
        ({"0001_a.sql": "-- only a comment\n"}, "no statements"),
        ({}, "no numbered .sql migrations"),
    ],
)
def test_malformed_migration_directories_are_refused(tmp_path: Path, files: dict[str, str], error: str) -> None:
    with pytest.raises(MigrationError, match=error):
        discover(_write(tmp_path / "sql", files))


def test_bundled_migrations_build_the_documented_schema_idempotently(store: ChdbStore) -> None:
    names = [p.name for p in sorted(DEFAULT_SQL.glob("[0-9]*.sql"))]
    assert migrate(store, DEFAULT_SQL) == names
    assert migrate(store, DEFAULT_SQL) == names  # migrate(): every migration in effect, applied or not
    assert apply_migrations(store, DEFAULT_SQL) == []
    assert _tables(store) == [
        "action_exports",
        "consent",
        "erasure_log",
        "marketing_refused",
        "model_versions",
        "rejected_events",
        "schema_migrations",
        "score_history",
        "score_history_mv",
        "stage_transitions",
        "suppressed",
        "user_scores",
    ]
    for table, cols in ORIGINAL_COLUMNS.items():
        got = store.query(
            "SELECT name, default_kind FROM system.columns WHERE database = currentDatabase() AND table = {t:String} "
            "ORDER BY position",
            params={"t": table},
        ).to_pylist()
        assert [c["name"] for c in got[: len(cols)]] == cols, table
        assert all(c["default_kind"] == "DEFAULT" for c in got[len(cols) :]), table  # additions carry defaults


def test_schema_doc_describes_every_table_and_column(store: ChdbStore) -> None:
    apply_migrations(store, DEFAULT_SQL)
    doc = (DEFAULT_SQL.parents[1] / "docs" / "schema.md").read_text()
    sections = {m.group(1): m.start() for m in re.finditer(r"^#+ `(\w+)`", doc, re.MULTILINE)}
    cols = store.query(
        "SELECT table, name FROM system.columns WHERE database = currentDatabase() "
        "AND table IN (SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree')"
    ).to_pylist()
    for table in {c["table"] for c in cols}:
        assert table in sections, f"no section for {table}"
        start = sections[table]
        end = min([p for p in sections.values() if p > start] + [len(doc)])
        for name in (c["name"] for c in cols if c["table"] == table):
            assert f"`{name}`" in doc[start:end], f"{table}.{name} undocumented"


def test_store_built_by_the_old_unrecorded_ddl_upgrades_in_place(store: ChdbStore, tmp_path: Path) -> None:
    # before the runner existed, Store.migrate ran 0001 without recording it; such stores hold data
    for stmt in discover(DEFAULT_SQL)[0].statements:
        store.command(stmt)
    store.command(
        "INSERT INTO rejected_events (received_at, reason, detail, source, partition, offset, payload) VALUES "
        """(now64(3), 'negative_amount', '', 'f.jsonl', -1, 7, '{"user_id":"u-old","amount":-1}')"""
    )
    store.command(
        "INSERT INTO stage_transitions (user_id, from_stage, to_stage, at, churn_risk, purchase_propensity, reasons, "
        "model_version, version) VALUES ('u-old', 'none', 'new', now64(3), 0.1, 0.2, [], 'm', 1)"
    )
    assert len(apply_migrations(store, DEFAULT_SQL)) == len(discover(DEFAULT_SQL))
    assert store.query("SELECT user_id FROM rejected_events").column("user_id").to_pylist() == ["u-old"]
    first = store.query("SELECT inserted_at FROM stage_transitions").column("inserted_at").to_pylist()
    again = store.query("SELECT inserted_at FROM stage_transitions").column("inserted_at").to_pylist()
    assert first == again  # materialised at migration time, not re-evaluated at every read
    rows = pa.table({"user_id": ["u-new"], "opted_out": [True], "updated_at": pa.array([0], pa.timestamp("ms", "UTC"))})
    store.insert("consent", rows.append_column("source", pa.array(["test"])))
    assert store.query("SELECT user_id FROM consent FINAL").column("user_id").to_pylist() == ["u-new"]
