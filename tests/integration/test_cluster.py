"""Scale-out: a 2-process Bytewax cluster computes exactly what one process computes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.io.store.http import HttpStore
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import write_jsonl
from tests.support.chdb_http import ChdbHttpServer

SCORES = (
    "SELECT user_id, stage, tier, at_risk, churn_risk, purchase_propensity, reasons, last_event_at, version "
    "FROM user_scores FINAL ORDER BY user_id"
)
TRANSITIONS = "SELECT user_id, from_stage, to_stage, at FROM stage_transitions FINAL ORDER BY user_id, at, to_stage"


def _run(events: Path, data: Path, *extra: str) -> tuple[list[dict], list[dict], int]:
    with ChdbHttpServer(data) as srv:
        cmd = [
            sys.executable, "-m", "pipelines.cli.main", "run", "--input", str(events), "--store", srv.url,
            "--metrics-port", "0", "--shards", "4", "--batch-events", "2000", *extra,
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        store = HttpStore(srv.url)
        try:
            return store.query(SCORES).to_pylist(), store.query(TRANSITIONS).to_pylist(), srv.requests
        finally:
            store.close()


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cluster") / "events.jsonl"
    write_jsonl(simulate(SimConfig(users=1500, days=15, seed=4)).events, path)
    return path


def test_two_process_cluster_writes_the_same_final_scores_as_one_process(events: Path, tmp_path: Path) -> None:
    one_scores, one_trans, _ = _run(events, tmp_path / "one")
    two_scores, two_trans, _ = _run(events, tmp_path / "two", "--processes", "2")
    assert len(one_scores) > 1000
    assert two_scores == one_scores
    assert two_trans == one_trans


def test_a_multi_process_run_refuses_the_embedded_store() -> None:
    from pipelines.settings import Settings

    with pytest.raises(ValueError, match="needs a ClickHouse server store"):
        Settings(store="chdb:///tmp/x", process_id=0, addresses="127.0.0.1:1,127.0.0.1:2")
