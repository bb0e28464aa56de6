"""THE label step serves the stream, ``lifecycle rescore`` and ``lifecycle score``: same rows for the same users.

The stream (the real flow into a real chDB store) scores its last batch and flushes its
pending users at the final event-time clock ``V``. For exactly those users, a rescore as of
``V`` and ``lifecycle score --as-of V`` must write the same ``user_scores`` rows: every
column, every value. What differs is stated and checked, never skipped:

* ``scored_at`` is the wall clock of the write;
* a rescore's ``version`` is ``V + 1`` (it must outrank the stream's rows, the version rule of
  :mod:`pipelines.offline.rescore`), and it carries the stream's action columns over;
* offline scoring decides no playbook actions: its action columns are null.

Probabilities are compared to a few float32 ulps, everything else exactly: ``lifecycle score``
replays the history in its own chunks, not tick by tick as the stream applies it, and the decayed
window sums round differently by an ulp (the model's own rounding does not depend on the batch:
:data:`pipelines.scoring.cpu.CPU_TILE_ROWS`).
"""

from __future__ import annotations

import shutil

import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from pipelines.core.rows import ACTION_COLUMNS
from pipelines.flow.runner import run_pipeline
from pipelines.io.store.chdb import ChdbStore
from pipelines.offline.history import load_history
from pipelines.offline.rescore import rescore
from pipelines.offline.score import score_as_of
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import write_jsonl
from pipelines.scoring.scorer import DEFAULT_MODEL_DIR, Scorer
from pipelines.settings import Settings

pytestmark = pytest.mark.integration

WALL_CLOCK = ("scored_at",)
#: columns the table adds itself (the ReplacingMergeTree's deletion flag, written by erasure only)
STORE_ONLY = ("is_deleted",)


def _user_scores(store: ChdbStore) -> pa.Table:
    return store.query("SELECT * FROM user_scores FINAL ORDER BY user_id")


PROBABILITIES = ("churn_risk", "purchase_propensity")


def _comparable(row: dict) -> dict:
    return {c: pytest.approx(v, rel=1e-6, abs=1e-7) if c in PROBABILITIES else v for c, v in row.items()}


def _rows(table: pa.Table, users: set[str]) -> dict[str, dict]:
    return {r["user_id"]: r for r in table.to_pylist() if r["user_id"] in users}


@pytest.fixture(scope="module")
def three_ways(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("label_step")
    events = tmp / "events.jsonl"
    write_jsonl(simulate(SimConfig(users=1200, days=21, seed=5)).events, events)
    path = tmp / "s.chdb"
    s = Settings(input=str(events), store=f"chdb://{path}", metrics_port=0, shards=2)
    run_pipeline(s, registry=CollectorRegistry(), serve_metrics=False)
    copy = tmp / "rescored.chdb"
    shutil.copytree(path, copy, symlinks=True)

    store = ChdbStore(path)
    try:
        stream = _user_scores(store)
    finally:
        store.close()
    final_clock = max(stream.column("version").to_pylist())
    at_clock = {r["user_id"] for r in stream.to_pylist() if r["version"] == final_clock}

    history = load_history([events]).events
    scorer = Scorer.from_dir(DEFAULT_MODEL_DIR, device="cpu")
    offline = score_as_of(history, cutoff_ms=final_clock, scorer=scorer, taxonomy=s.load_taxonomy())

    rstore = ChdbStore(copy)
    try:
        rescore(rstore, scorer, history, as_of_ms=final_clock, taxonomy=s.load_taxonomy())
        rescored = _user_scores(rstore)
    finally:
        rstore.close()
    return {
        "V": final_clock,
        "users": at_clock,
        "stream": stream,
        "score": offline,
        "rescore": rescored,
    }


def test_the_three_paths_write_the_user_scores_layout(three_ways: dict) -> None:
    stored = [c for c in three_ways["stream"].column_names if c not in STORE_ONLY]
    assert three_ways["score"].column_names == stored
    assert three_ways["rescore"].column_names == three_ways["stream"].column_names


def test_enough_users_are_scored_at_the_final_clock_to_compare(three_ways: dict) -> None:
    assert len(three_ways["users"]) >= 20, len(three_ways["users"])


def test_score_as_of_gives_the_streams_rows_for_the_same_users_and_instant(three_ways: dict) -> None:
    users = three_ways["users"]
    stream, offline = _rows(three_ways["stream"], users), _rows(three_ways["score"], users)
    assert offline.keys() == stream.keys() == users
    for uid, want in stream.items():
        got = offline[uid]
        assert all(got[c] is None for c in ACTION_COLUMNS), got  # nothing is decided offline
        same = {c: got[c] for c in got if c not in WALL_CLOCK and c not in ACTION_COLUMNS}
        assert same == _comparable({c: want[c] for c in same}), uid


def test_rescore_as_of_the_final_clock_gives_the_streams_rows_and_keeps_its_actions(three_ways: dict) -> None:
    users = three_ways["users"]
    stream, rescored = _rows(three_ways["stream"], users), _rows(three_ways["rescore"], users)
    assert rescored.keys() == stream.keys()
    for uid, want in stream.items():
        got = rescored[uid]
        assert got["version"] == three_ways["V"] + 1  # outranks the stream's row (the version rule)
        same = {c: got[c] for c in want if c not in (*WALL_CLOCK, "version")}
        assert same == _comparable({c: want[c] for c in same}), uid
