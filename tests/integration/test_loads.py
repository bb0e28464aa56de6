"""Loads that keep state: the state persists beside the store, and loading a history in parts is loading it at once.

Real pipeline runs (``lifecycle run``'s runner) into real chDB stores, no recovery directory given:
the state is derived from the store (``PATH.state``) and does not depend on the input's name.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipelines.flow.runner import StateError, run_pipeline
from pipelines.io.store.chdb import ChdbStore
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import write_jsonl
from pipelines.settings import Settings

pytestmark = pytest.mark.integration

SCORES = "SELECT * EXCEPT (scored_at) FROM user_scores FINAL ORDER BY user_id"
TRANSITIONS = "SELECT * EXCEPT (inserted_at) FROM stage_transitions FINAL ORDER BY user_id, at, to_stage"


def _tables(store: Path) -> dict[str, list[dict]]:
    s = ChdbStore(store)
    try:
        return {"user_scores": s.query(SCORES).to_pylist(), "stage_transitions": s.query(TRANSITIONS).to_pylist()}
    finally:
        s.close()


def _run(inputs: str, store: Path, **kw: object) -> None:
    s = Settings(input=inputs, store=f"chdb://{store}", metrics_port=0, shards=2, batch_events=700, **kw)
    run_pipeline(s, registry=CollectorRegistry(), serve_metrics=False)


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("loads")
    write_jsonl(simulate(SimConfig(users=400, days=20, seed=17)).events, tmp / "all.jsonl")
    lines = (tmp / "all.jsonl").read_bytes().splitlines(keepends=True)
    cut = len(lines) * 3 // 5
    (tmp / "part1.jsonl").write_bytes(b"".join(lines[:cut]))
    (tmp / "part2.jsonl").write_bytes(b"".join(lines[cut:]))
    return tmp, tmp / "part1.jsonl", tmp / "part2.jsonl"


def test_part1_then_part2_equals_both_at_once(parts: tuple[Path, Path, Path]) -> None:
    tmp, part1, part2 = parts
    at_once = tmp / "at-once.chdb"
    _run(f"{part1},{part2}", at_once)
    in_parts = tmp / "in-parts.chdb"
    _run(str(part1), in_parts)
    assert (tmp / "in-parts.chdb.state").is_dir()  # the state persisted beside the store, by default
    _run(str(part2), in_parts)
    want, got = _tables(at_once), _tables(in_parts)
    assert len(want["user_scores"]) > 300 and len(want["stage_transitions"]) > len(want["user_scores"])
    assert got == want


def test_loading_a_file_again_reads_nothing_new(parts: tuple[Path, Path, Path]) -> None:
    tmp, part1, _ = parts
    store = tmp / "again.chdb"
    _run(str(part1), store)
    before = _tables(store)
    _run(str(part1), store)  # the state knows part1 was read to its end
    assert _tables(store) == before


def test_a_run_without_state_against_a_store_with_scores_refuses_and_rebuild_state_starts_over(
    parts: tuple[Path, Path, Path],
) -> None:
    tmp, part1, part2 = parts
    store = tmp / "lost-state.chdb"
    _run(str(part1), store)
    for f in (tmp / "lost-state.chdb.state").glob("*"):
        f.unlink()  # the state is gone (a lost volume)
    with pytest.raises(StateError, match="no pipeline state at .*--rebuild-state"):
        _run(str(part2), store)
    # the CLI says it in one line, and exits 3 (a configuration error)
    cmd = [sys.executable, "-m", "pipelines.cli.main", "run", "--input", str(part2), "--store", f"chdb://{store}",
           "--metrics-port", "0", "--shards", "2"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("lifecycle run:")]
    assert len(errors) == 1 and "--rebuild-state" in errors[0] and "Traceback" not in out.stderr
    # rebuilding on purpose replays the given input from scratch: the whole history gives the full result
    s = Settings(input=f"{part1},{part2}", store=f"chdb://{store}", metrics_port=0, shards=2, batch_events=700)
    run_pipeline(s, registry=CollectorRegistry(), serve_metrics=False, rebuild_state=True)
    reference = tmp / "reference.chdb"
    _run(f"{part1},{part2}", reference)
    assert _tables(store)["user_scores"] == _tables(reference)["user_scores"]
