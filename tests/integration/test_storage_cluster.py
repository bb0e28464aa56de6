"""The cluster DDL (sql/cluster) on chDB, as far as an embedded engine can take it.

chDB has no ClickHouse Keeper and refuses distributed DDL, so ``Replicated*``
tables cannot take writes and ``ON CLUSTER`` cannot run. What is tested:

1. every statement parses exactly as written (``EXPLAIN AST``);
2. the files, with ``ON CLUSTER`` removed and ``Replicated*`` engines replaced by
   their single-node twins (:func:`localize`), apply through the migration
   runner on a one-shard local cluster (``remote_servers`` + ``macros`` in a
   chDB config), and the real pipeline then writes through the ``Distributed``
   tables, the materialized view fills the per-shard history, the audience
   queries answer unchanged, and erasure deletes from the ``_local`` tables.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipelines.flow.runner import run_pipeline
from pipelines.io.store.base import split_statements
from pipelines.io.store.chdb import ChdbStore
from pipelines.io.store.http import HttpStore
from pipelines.io.store.migrations import apply_migrations
from pipelines.privacy.erasure import forget_user, set_consent
from pipelines.settings import Settings
from tests.integration.test_storage_downstream import EXPECTED, OPTED_OUT, crafted_events
from tests.support.chdb_http import ChdbHttpServer
from tests.support.taxonomy import taxonomy_variant

pytestmark = pytest.mark.integration

CLUSTER_SQL = Path(__file__).resolve().parents[2] / "sql" / "cluster"
QUERIES = CLUSTER_SQL.parent / "queries"
SHARDED = ("user_scores", "score_history", "stage_transitions", "rejected_events", "action_exports")
FULL_COPY = ("consent", "erasure_log", "model_versions", "schema_migrations", "suppressed")

# One shard, one replica: this process. tcp_port makes the replica "local", so the Distributed engine
# reads and writes the _local tables in-process instead of connecting to a server.
CONFIG = """<clickhouse>
  <tcp_port>9000</tcp_port>
  <macros><cluster>lifecycle</cluster><shard>01</shard><replica>r1</replica></macros>
  <remote_servers><lifecycle><shard><internal_replication>true</internal_replication>
    <replica><host>127.0.0.1</host><port>9000</port></replica>
  </shard></lifecycle></remote_servers>
</clickhouse>
"""


def localize(sql: str) -> str:
    """The cluster DDL as one node without Keeper can run it (nothing else changes)."""
    sql = re.sub(r"\s+ON CLUSTER '\{cluster\}'", "", sql)
    sql = re.sub(r"Replicated(\w*MergeTree)\('[^']*',\s*'[^']*'(?:,\s*)?", r"\1(", sql)
    return sql.replace("replicated_deduplication_window", "non_replicated_deduplication_window")


def _statements() -> list[str]:
    return [s for f in sorted(CLUSTER_SQL.glob("*.sql")) for s in split_statements(f.read_text())]


def test_every_cluster_statement_parses_as_written(tmp_path: Path) -> None:
    stmts = _statements()
    assert all("ON CLUSTER '{cluster}'" in s for s in stmts)
    for s in stmts:
        for engine in re.findall(r"Replicated\w*MergeTree\('([^']*)'", s):
            table = engine.rsplit("/", 1)[-1]
            # sharded data per shard, small tables as one copy cluster-wide
            assert ("{shard}" in engine) == (table.removesuffix("_local") in SHARDED), engine
    store = ChdbStore(tmp_path / "plain.chdb")
    try:
        for s in stmts:
            store.query("EXPLAIN AST " + s)  # raises on a syntax error
    finally:
        store.close()


def _local_cluster(tmp_path: Path) -> tuple[Path, Path]:
    """(the localized cluster DDL, a crafted events file) under ``tmp_path``, with ``cluster.xml`` beside them."""
    sql = tmp_path / "sql"
    sql.mkdir()
    for f in CLUSTER_SQL.glob("*.sql"):
        (sql / f.name).write_text(localize(f.read_text()))
    (tmp_path / "cluster.xml").write_text(CONFIG)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(crafted_events()) + b"\n")
    return sql, events


def test_every_insert_into_a_distributed_table_waits_for_the_shards(tmp_path: Path) -> None:
    # distributed_foreground_insert = 1 on every insert: without it a real cluster answers once the block is
    # queued on the receiving node, before the shards commit it (the served engine records what each insert sent)
    sql, events = _local_cluster(tmp_path)
    with ChdbHttpServer(tmp_path / "served", config_file=tmp_path / "cluster.xml") as srv:
        store = HttpStore(srv.url)
        try:
            apply_migrations(store, sql)
            s = Settings(input=str(events), store=srv.url, metrics_port=0, shards=2, batch_events=20)
            run_pipeline(s, registry=CollectorRegistry(), store=store, serve_metrics=False)
        finally:
            store.close()
    inserts = [r for r in srv.log if r.table]
    assert {r.table for r in inserts} >= {"user_scores", "stage_transitions", "rejected_events"}
    assert [r.table for r in inserts if r.settings.get("distributed_foreground_insert") != "1"] == []


def test_cluster_schema_serves_pipeline_queries_and_erasure_through_distributed_tables(tmp_path: Path) -> None:
    sql, events = _local_cluster(tmp_path)

    store = ChdbStore(tmp_path / "store.chdb", config_file=tmp_path / "cluster.xml")
    try:
        assert len(apply_migrations(store, sql)) == 8
        tables = store.query("SELECT name, engine FROM system.tables WHERE database = currentDatabase()")
        engines = {r["name"]: r["engine"] for r in tables.to_pylist()}
        assert all(engines[t] == "Distributed" and engines[f"{t}_local"].endswith("MergeTree") for t in SHARDED)
        assert all(engines[t].endswith("MergeTree") for t in FULL_COPY)

        s = Settings(
            input=str(events),
            store=f"chdb://{tmp_path / 'store.chdb'}",
            metrics_port=0,
            shards=2,
            batch_events=20,
            taxonomy=str(taxonomy_variant(tmp_path / "taxonomy", at_risk_threshold=0.0)),
        )
        run_pipeline(s, registry=CollectorRegistry(), store=store, serve_metrics=False)  # writes via Distributed
        set_consent(store, OPTED_OUT, True, "test", table_suffix="_local")

        rows = store.query("SELECT user_id, stage, tier FROM user_scores FINAL").to_pylist()
        assert {r["user_id"]: (r["stage"], r["tier"]) for r in rows} == EXPECTED
        latest = "SELECT user_id, max(version) AS v FROM {} GROUP BY user_id ORDER BY user_id"
        assert store.query(latest.format("score_history_local")) == store.query(latest.format("user_scores_local"))

        def ask(name: str, **params: object) -> set[str]:
            got = store.query((QUERIES / f"{name}.sql").read_text(), params=params)
            return set(got.column("user_id").to_pylist())

        assert ask("win_back_candidates") == {"vip_dormant", "regular_churned", "unsub_regular"}
        assert ask("at_risk_vips") == {"vip_active"}
        assert ask("stage_audience", stage="dormant") == {"vip_dormant", "potential_dormant"}
        acted = {
            r["user_id"]
            for r in store.query("SELECT user_id FROM user_scores FINAL WHERE action != 'none'").to_pylist()
        }
        queue = ask("action_queue", action="", max_age_hours=24 * 365, limit=1000)
        assert "vip_active" in queue and queue == acted - set(OPTED_OUT)  # vip_care for an at-risk VIP

        counts = forget_user(store, "vip_dormant", reason="test", salt=b"k", table_suffix="_local")
        assert counts["user_scores"] and counts["stage_transitions"] and counts["rejected_events"]
        for t in SHARDED:
            n = store.query(f"SELECT count() AS n FROM {t}_local WHERE user_id = 'vip_dormant'").column("n")
            assert n.to_pylist() == [0], t
    finally:
        store.close()
