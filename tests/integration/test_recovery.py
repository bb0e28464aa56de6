"""Crash and resume: after ``kill -9`` mid-stream and restarts from the Bytewax recovery
store, the visible scores (under FINAL) equal those of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.io.store.chdb import ChdbStore
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import write_jsonl
from tests.support.recovery import committed_epoch

SQL = (
    "SELECT user_id, stage, tier, at_risk, churn_risk, purchase_propensity, reasons, last_event_at, version "
    "FROM user_scores FINAL ORDER BY user_id"
)
TRANSITIONS = "SELECT user_id, from_stage, to_stage, at FROM stage_transitions FINAL ORDER BY user_id, at, to_stage"


def _cmd(events: Path, store: Path, recovery: Path | None) -> list[str]:
    cmd = [
        sys.executable, "-m", "pipelines.cli.main", "run", "--input", str(events), "--store", f"chdb://{store}",
        "--metrics-port", "0", "--batch-events", "300", "--shards", "3",
    ]  # fmt: skip
    if recovery is not None:
        cmd += ["--recovery-dir", str(recovery), "--epoch-seconds", "0.2"]
    return cmd


def _read(store: Path) -> tuple[list[dict], list[dict]]:
    s = ChdbStore(store)
    try:
        return s.query(SQL).to_pylist(), s.query(TRANSITIONS).to_pylist()
    finally:
        s.close()


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    write_jsonl(simulate(SimConfig(users=3000, days=20, seed=3)).events, path)
    return path


@pytest.fixture(scope="module")
def reference(events: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], list[dict]]:
    store = tmp_path_factory.mktemp("ref") / "store.chdb"
    subprocess.run(_cmd(events, store, None), check=True, capture_output=True, timeout=300)
    return _read(store)


def test_kill_9_mid_stream_twice_then_resume_equals_an_uninterrupted_run(
    events: Path, reference: tuple[list[dict], list[dict]], tmp_path: Path
) -> None:
    store, recovery = tmp_path / "store.chdb", tmp_path / "recovery"
    kills = 0
    for _ in range(2):  # the second kill hits the resumed run
        start_epoch = committed_epoch(recovery)
        proc = subprocess.Popen(_cmd(events, store, recovery), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        # kill mid-stream: once a few more epochs were committed (so progress was made and recorded)
        while proc.poll() is None and committed_epoch(recovery) < start_epoch + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    assert kills == 2, "the run ended before it could be killed: make the input bigger"
    assert any(recovery.glob("part-*.sqlite3")), "no recovery store was written"
    done = subprocess.run(_cmd(events, store, recovery), capture_output=True, timeout=300, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    scores, transitions = _read(store)
    ref_scores, ref_transitions = reference
    assert len(scores) == len(ref_scores) > 2000
    assert scores == ref_scores
    assert transitions == ref_transitions


def test_forget_erases_the_user_from_the_store_and_the_recovery_state(events: Path, tmp_path: Path) -> None:
    store, recovery = tmp_path / "store.chdb", tmp_path / "recovery"
    subprocess.run(_cmd(events, store, recovery), check=True, capture_output=True, timeout=300)
    victim = _read(store)[0][0]["user_id"]
    forget = [sys.executable, "-m", "pipelines.cli.main", "forget", "--user", victim, "--store", f"chdb://{store}",
              "--recovery-dir", str(recovery)]  # fmt: skip
    # under another taxonomy than the pipeline's, restoring the snapshots would relabel everyone: refused, and
    # before the store is touched
    env = {**os.environ, "LIFECYCLE_ERASURE_SALT": "test-erasure-key"}  # the HMAC key erasure needs
    wrong = subprocess.run([*forget, "--taxonomy", "aida-5"], capture_output=True, text=True, timeout=120, env=env)
    assert wrong.returncode == 3 and "another taxonomy" in wrong.stderr, wrong.stderr
    assert any(r["user_id"] == victim for r in _read(store)[0])
    out = subprocess.run(forget, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert victim not in out.stdout  # only the id's hash is printed
    assert '"state_rows_erased": 1' in out.stdout
    # the resumed pipeline (nothing left to read) and its silence timers do not bring the user back
    subprocess.run(_cmd(events, store, recovery), check=True, capture_output=True, timeout=300, env=env)
    s = ChdbStore(store)
    try:
        for table in ("user_scores", "stage_transitions", "score_history"):
            n = s.query(f"SELECT count() AS n FROM {table} WHERE user_id = '{victim}'").column("n")[0].as_py()
            assert n == 0, table
    finally:
        s.close()


def test_state_erase_forgets_a_user_and_a_later_event_starts_afresh() -> None:
    from pipelines.core.shard import ShardConfig, ShardProcessor
    from tests.support.events import T0, columns

    proc = ShardProcessor(ShardConfig())
    proc.process(columns([("gone", T0, "order", 50.0), ("stay", T0, "page_view")]))
    proc.process(columns([("stay", T0 + 3_600_000, "page_view")]))  # closes the first tick: both scored
    assert proc.erase(columns([("gone", T0, "page_view")]).user_key) == 1
    res = proc.process(columns([("stay", T0 + 20 * 86_400_000, "page_view")]))  # gone's dormancy timer is due
    assert res.rows and all("gone" not in r.user_id.tolist() for r in res.rows)
    proc.process(columns([("gone", T0 + 21 * 86_400_000, "page_view")]))
    res = proc.process(columns([("stay", T0 + 22 * 86_400_000, "page_view")]))
    (first,) = [r for r in res.rows if "gone" in r.user_id.tolist()][:1]
    assert first.prev_stage[first.user_id.tolist().index("gone")] == -1  # a new user, no history
