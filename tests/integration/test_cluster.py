"""Scale-out: a 2-process Bytewax cluster computes exactly what one process computes, and both processes work.

Who wrote what comes from the served engine's request log: clickhouse-connect sends every request of a client in
its own session, and each process opens one store, so a session is a process. Every member registers its model
(``model_versions``) at start; the score rows leave through the flow's single store partition
(:class:`pipelines.io.store.sink.StoreSink`: few, large blocks), so exactly one member inserts them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.io.store.http import HttpStore
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import write_jsonl
from tests.support.chdb_http import ChdbHttpServer, Request

SCORES = (
    "SELECT user_id, stage, tier, at_risk, churn_risk, purchase_propensity, reasons, last_event_at, version "
    "FROM user_scores FINAL ORDER BY user_id"
)
TRANSITIONS = "SELECT user_id, from_stage, to_stage, at FROM stage_transitions FINAL ORDER BY user_id, at, to_stage"


def _run(events: Path, data: Path, *extra: str) -> tuple[list[dict], list[dict], list[Request]]:
    with ChdbHttpServer(data) as srv:
        cmd = [
            sys.executable, "-m", "pipelines.cli.main", "run", "--input", str(events), "--store", srv.url,
            "--metrics-port", "0", "--shards", "4", "--batch-events", "2000", *extra,
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        store = HttpStore(srv.url)
        try:
            return store.query(SCORES).to_pylist(), store.query(TRANSITIONS).to_pylist(), list(srv.log)
        finally:
            store.close()


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cluster") / "events.jsonl"
    write_jsonl(simulate(SimConfig(users=1500, days=15, seed=4)).events, path)
    return path


def _writers(log: list[Request], table: str) -> set[str]:
    """The sessions (one per process) that inserted into ``table``."""
    return {r.session_id for r in log if r.table == table}


def test_two_process_cluster_writes_the_same_final_scores_as_one_process(events: Path, tmp_path: Path) -> None:
    one_scores, one_trans, one_log = _run(events, tmp_path / "one")
    two_scores, two_trans, two_log = _run(events, tmp_path / "two", "--processes", "2")
    assert len(one_scores) > 1000
    assert two_scores == one_scores
    assert two_trans == one_trans
    # every member of the cluster started against the store and inserted (a member that never came up, or
    # wrote elsewhere, would leave one writer); the rows came through the one store partition, from one member
    assert len(_writers(one_log, "model_versions")) == 1
    assert len(_writers(two_log, "model_versions")) == 2
    assert len(_writers(two_log, "user_scores")) == 1
    assert _writers(two_log, "user_scores") <= _writers(two_log, "model_versions")


def test_a_multi_process_run_refuses_the_embedded_store() -> None:
    from pipelines.settings import Settings

    with pytest.raises(ValueError, match="needs a ClickHouse server store"):
        Settings(store="chdb:///tmp/x", process_id=0, addresses="127.0.0.1:1,127.0.0.1:2")
