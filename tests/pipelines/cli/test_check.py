"""``lifecycle check`` / ``run --dry-run`` and ``db status``: a healthy setup passes, each broken part fails its row.

Real components: the CLI in a subprocess, chDB stores written by a real ``db migrate``, a socket
holding the metrics port, a damaged recovery store, a port where no broker listens.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli.errors import EXIT_CONFIG, EXIT_DATA, EXIT_UNAVAILABLE
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import write_jsonl
from pipelines.settings import DEFAULT_SQL

CLI = [sys.executable, "-m", "pipelines.cli.main"]


def lifecycle(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    write_jsonl(simulate(SimConfig(users=20, days=3, seed=2)).events, path)
    return path


def check(events: Path | str, store: Path, *more: str, cmd: tuple[str, ...] = ("check",)) -> list[str]:
    return [*cmd, "--input", str(events), "--store", f"chdb://{store}", "--metrics-port", "0", *more]


def row(out: str, name: str) -> str:
    """The status cell of the check named ``name`` in the printed table."""
    line = next(ln for ln in out.splitlines() if ln.startswith(f"│ {name} "))
    return line.split("│")[2].strip()


def test_a_healthy_setup_passes_every_check_and_creates_nothing(events: Path, tmp_path: Path) -> None:
    store = tmp_path / "new.chdb"
    proc = lifecycle(*check(events, store))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout
    for name in ("taxonomy and playbook", "model", "store", "input", "metrics port", "recovery store"):
        assert row(proc.stdout, name) == "ok", proc.stdout
    assert f"{len(list(DEFAULT_SQL.glob('0*.sql')))} pending" in " ".join(proc.stdout.split())
    assert not store.exists() and not (tmp_path / "new.chdb.state").exists()


def test_run_dry_run_is_the_check_and_runs_nothing(events: Path, tmp_path: Path) -> None:
    store = tmp_path / "dry.chdb"
    proc = lifecycle(*check(events, store, "--dry-run", cmd=("run",)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout and "Read " not in proc.stdout
    assert not store.exists()


def _broken_taxonomy(tmp: Path) -> list[str]:
    bad = tmp / "bad.yaml"
    bad.write_text("name: broken\nstages: [\n")
    return ["--taxonomy", str(bad)]


def _missing_model(tmp: Path) -> list[str]:
    return ["--model", str(tmp / "no-model")]


def _store_under_a_file(tmp: Path) -> list[str]:
    (tmp / "file").write_text("x")
    return ["--store", f"chdb://{tmp / 'file' / 'store'}"]


def _missing_input(tmp: Path) -> list[str]:
    return ["--input", str(tmp / "nothing.jsonl")]


def _no_broker(tmp: Path) -> list[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return ["--input", f"kafka://127.0.0.1:{port}/events", "--kafka-connect-timeout-seconds", "1"]


def _damaged_recovery_store(tmp: Path) -> list[str]:
    state = tmp / "state"
    state.mkdir()
    (state / "part-0.sqlite3").write_bytes(b"this is not a sqlite database" * 100)
    return ["--recovery-dir", str(state)]


def _writable_recovery_store(tmp: Path) -> list[str]:
    state = tmp / "state"
    state.mkdir()
    state.chmod(0o777)  # anyone could plant a snapshot (a pickle) there
    return ["--recovery-dir", str(state)]


@pytest.mark.parametrize(
    ("broken", "name", "code", "says"),
    [
        (_broken_taxonomy, "taxonomy and playbook", EXIT_CONFIG, "bad.yaml"),
        (_missing_model, "model", EXIT_CONFIG, "not a model artifact"),
        (_store_under_a_file, "store", EXIT_CONFIG, "is a file, not a directory"),
        (_missing_input, "input", EXIT_CONFIG, "no such file"),
        (_no_broker, "input", EXIT_UNAVAILABLE, "no broker answered"),
        (_damaged_recovery_store, "recovery store", EXIT_DATA, "unreadable"),
        (_writable_recovery_store, "recovery store", EXIT_CONFIG, "writable by group or others"),
    ],
    ids=["taxonomy", "model", "store", "input", "kafka", "recovery", "untrusted-recovery"],
)
def test_each_broken_part_fails_its_own_check(
    events: Path, tmp_path: Path, broken: object, name: str, code: int, says: str
) -> None:
    more = broken(tmp_path)  # type: ignore[operator]
    proc = lifecycle(*check(events, tmp_path / "s.chdb"), *more)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert row(proc.stdout, name) == "FAIL", proc.stdout
    assert says in " ".join(proc.stdout.split()).replace("│ ", ""), proc.stdout
    assert "1 of 8 checks failed" in proc.stdout and "Traceback" not in proc.stderr


def test_a_metrics_port_in_use_fails_its_check(events: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = lifecycle(*check(events, tmp_path / "s")[:-2], "--metrics-port", str(port))
    assert proc.returncode == EXIT_UNAVAILABLE
    assert row(proc.stdout, "metrics port") == "FAIL"


def test_a_store_with_scores_but_no_state_fails_the_recovery_check(events: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.chdb"
    ran = lifecycle("run", "--input", str(events), "--store", f"chdb://{store}", "--metrics-port", "0")
    assert ran.returncode == 0, ran.stderr
    shutil.rmtree(tmp_path / "s.chdb.state")  # the state volume is lost
    proc = lifecycle(*check(events, store))
    assert proc.returncode == EXIT_CONFIG
    assert row(proc.stdout, "recovery store") == "FAIL" and row(proc.stdout, "store") == "ok"
    assert "--rebuild-state" in " ".join(proc.stdout.split())


def test_db_status_lists_applied_and_pending_migrations(tmp_path: Path) -> None:
    sql = tmp_path / "sql"
    shutil.copytree(DEFAULT_SQL, sql)
    store = f"chdb://{tmp_path / 's.chdb'}"
    assert lifecycle("db", "migrate", "--store", store, "--sql-dir", str(sql)).returncode == 0
    (sql / "0099_next_change.sql").write_text("ALTER TABLE user_scores MODIFY SETTING index_granularity = 8192;\n")
    proc = lifecycle("db", "status", "--store", store, "--sql-dir", str(sql))
    assert proc.returncode == 0, proc.stderr
    applied = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.strip().startswith("applied")]
    pending = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.strip().startswith("pending")]
    assert applied == sorted(p.name for p in DEFAULT_SQL.glob("0*.sql")) and pending == ["0099_next_change.sql"]
    assert "1 pending" in proc.stdout
