"""The CLI's error policy, one test per failure an operator met (issue 20): one line, its exit code, no traceback.

Every test runs the real command line in a subprocess against real components (chDB, the
simulator's events, a socket holding a port, a process holding a store), as an operator would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.cli.errors import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import write_jsonl
from pipelines.settings import DEFAULT_MODEL

CLI = [sys.executable, "-m", "pipelines.cli.main"]


def lifecycle(*argv: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *argv], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def one_error_line(proc: subprocess.CompletedProcess[str], cmd: str) -> str:
    """The single error line on stderr (asserting there is exactly one, and no traceback); returns it."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "errors.pydantic.dev" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"lifecycle {cmd}: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def run_args(events: Path | str, store: Path | str, *more: str) -> list[str]:
    url = store if isinstance(store, str) else f"chdb://{store}"
    return ["run", "--input", str(events), "--store", url, "--metrics-port", "0", "--shards", "2", *more]


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    write_jsonl(simulate(SimConfig(users=40, days=5, seed=3)).events, path)
    return path


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory: pytest.TempPathFactory, events: Path) -> Path:
    """A store written by a real run, with one dead letter whose payload is not UTF-8."""
    tmp = tmp_path_factory.mktemp("filled")
    mixed = tmp / "mixed.jsonl"
    mixed.write_bytes(events.read_bytes() + b'{"event_id": "\xff\xfe broken\n')
    store = tmp / "store.chdb"
    proc = lifecycle(*run_args(mixed, store))
    assert proc.returncode == 0, proc.stderr
    return store


# ------------------------------------------------------------------ store


def test_an_unreachable_store_server_is_one_line_exit_4_without_the_password(events: Path, tmp_path: Path) -> None:
    proc = lifecycle(*run_args(events, "http://ops:s3cret@nohost.invalid:1/db"))
    assert proc.returncode == EXIT_UNAVAILABLE
    line = one_error_line(proc, "run")
    assert "cannot reach the store http://***@nohost.invalid:1/db" in line
    assert "s3cret" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("where", ["file", "proc"])
def test_a_store_path_that_cannot_be_a_directory_is_one_line_exit_3(events: Path, tmp_path: Path, where: str) -> None:
    regular = tmp_path / "regular"
    regular.write_text("not a directory")
    store = regular / "store.chdb" if where == "file" else Path("/proc/lifecycle-store")
    proc = lifecycle(*run_args(events, store))
    assert proc.returncode == EXIT_CONFIG
    line = one_error_line(proc, "run")
    assert f"chDB store {store}" in line and "one process per" not in line
    assert "Stack trace" not in proc.stderr


def test_a_second_run_on_a_chdb_store_in_use_is_refused_in_one_line_exit_4(events: Path, tmp_path: Path) -> None:
    store = tmp_path / "busy.chdb"
    hold = f"import sys; from pipelines.io.store.chdb import ChdbStore; s = ChdbStore({str(store)!r});"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold + " print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        proc = lifecycle(*run_args(events, store))
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)
    assert proc.returncode == EXIT_UNAVAILABLE
    assert f"chDB store {store} is in use by process {holder.pid}" in one_error_line(proc, "run")


@pytest.mark.parametrize("url", ["chdb:/x", "ftp://example.com/db"])
def test_a_store_url_of_another_scheme_is_one_line_exit_3(events: Path, url: str) -> None:
    proc = lifecycle(*run_args(events, url))
    assert proc.returncode == EXIT_CONFIG
    line = one_error_line(proc, "run")
    assert "--store (LIFECYCLE_STORE)" in line and "chdb://PATH or http(s)://HOST:PORT/DB" in line


def test_several_processes_on_a_chdb_store_are_refused_before_a_cluster_starts(events: Path, tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = lifecycle(*run_args(events, tmp_path / "s.chdb", "--processes", "2"))
    assert proc.returncode == EXIT_CONFIG
    assert "--processes 2 needs a ClickHouse server store" in one_error_line(proc, "run")
    assert "local cluster" not in proc.stdout and not (tmp_path / "s.chdb").exists()
    assert time.monotonic() - t0 < 60


# ------------------------------------------------------------------ model


@pytest.mark.parametrize("damage", ["missing", "model.pt", "artifact.json"])
def test_a_missing_or_corrupt_model_is_one_line_exit_3_before_the_store_is_created(
    events: Path, tmp_path: Path, damage: str
) -> None:
    model = tmp_path / "model"
    if damage != "missing":
        shutil.copytree(DEFAULT_MODEL, model)
        (model / damage).write_bytes(b"\x00 not what it should be {")
    proc = lifecycle(*run_args(events, tmp_path / "s.chdb", "--model", str(model)))
    assert proc.returncode == EXIT_CONFIG
    line = one_error_line(proc, "run")
    assert line.startswith("lifecycle run: model: ") and str(model) in line
    assert not (tmp_path / "s.chdb").exists()


# ------------------------------------------------------------------ port, broker


def test_a_metrics_port_in_use_is_one_line_exit_4_before_the_store_is_created(events: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = lifecycle("run", "--input", str(events), "--store", f"chdb://{tmp_path}/s.chdb", "--metrics-port",
                         str(port))  # fmt: skip
    assert proc.returncode == EXIT_UNAVAILABLE
    assert f"metrics port 127.0.0.1:{port} is already in use" in one_error_line(proc, "run")
    assert not (tmp_path / "s.chdb").exists()


def test_kafka_without_a_broker_fails_in_bounded_time_with_one_line_and_no_client_log(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.monotonic()
    proc = lifecycle(*run_args(f"kafka://127.0.0.1:{port}/events", tmp_path / "s.chdb"),
                     "--kafka-connect-timeout-seconds", "2")  # fmt: skip
    elapsed = time.monotonic() - t0
    assert proc.returncode == EXIT_UNAVAILABLE
    assert f"kafka: no broker answered at 127.0.0.1:{port} within 2 s" in one_error_line(proc, "run")
    assert "FAIL|" not in proc.stderr and "panicked" not in proc.stderr  # librdkafka's log goes to the logger
    assert len(proc.stderr.splitlines()) <= 3, proc.stderr
    assert elapsed < 30
    assert not (tmp_path / "s.chdb").exists()


# ------------------------------------------------------------------ inputs


def test_a_directory_as_input_says_so_exit_3(tmp_path: Path) -> None:
    (tmp_path / "exports").mkdir()
    proc = lifecycle(*run_args(tmp_path / "exports", tmp_path / "s.chdb"))
    assert proc.returncode == EXIT_CONFIG
    assert f"--input {tmp_path / 'exports'} is a directory" in one_error_line(proc, "run")


def test_the_truth_csv_as_input_is_read_and_exits_5_because_every_row_is_rejected(tmp_path: Path) -> None:
    truth = tmp_path / "events.truth.csv"
    truth.write_text("user_id,stage\n" + "".join(f"u{i},new\n" for i in range(30)))
    proc = lifecycle(*run_args(truth, tmp_path / "s.chdb"))
    assert proc.returncode == EXIT_DATA
    assert "all 30 input lines of" in one_error_line(proc, "run") and "missing_field 30" in proc.stderr


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_run_reads_csv_and_parquet_events_like_ndjson(events: Path, tmp_path: Path, fmt: str) -> None:
    import polars as pl

    table = tmp_path / f"events.{fmt}"
    frame = pl.read_ndjson(events)
    frame.write_csv(table) if fmt == "csv" else frame.write_parquet(table)
    got = lifecycle(*run_args(table, tmp_path / "t.chdb"))
    want = lifecycle(*run_args(events, tmp_path / "j.chdb"))
    assert got.returncode == want.returncode == 0, got.stderr + want.stderr
    sql = "SELECT user_id, stage, round(churn_risk, 6) FROM user_scores FINAL ORDER BY user_id FORMAT TSV"
    rows = [lifecycle("query", "--store", f"chdb://{tmp_path / s}", sql).stdout for s in ("t.chdb", "j.chdb")]
    assert rows[0] == rows[1] and rows[0].count("\n") > 10


def test_an_input_of_another_format_is_refused_by_name_exit_3(tmp_path: Path) -> None:
    tsv = tmp_path / "events.tsv"
    tsv.write_text("event_id\tuser_id\n")
    proc = lifecycle(*run_args(tsv, tmp_path / "s.chdb"))
    assert proc.returncode == EXIT_CONFIG
    assert "a TSV file; `run` reads events as NDJSON" in one_error_line(proc, "run")


def test_an_input_whose_every_line_is_rejected_exits_5_with_the_reasons(tmp_path: Path) -> None:
    bad = tmp_path / "not-events.jsonl"
    bad.write_text("".join(json.dumps({"user": f"u{i}", "stage": "new"}) + "\n" for i in range(50)))
    proc = lifecycle(*run_args(bad, tmp_path / "s.chdb"))
    assert proc.returncode == EXIT_DATA
    line = one_error_line(proc, "run")
    assert "all 50 input lines" in line and "were rejected (missing_field 50)" in line


def test_an_empty_input_warns_and_exits_0(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    proc = lifecycle(*run_args(empty, tmp_path / "s.chdb"))
    assert proc.returncode == 0, proc.stderr
    assert "held no events" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ signals


@pytest.fixture(scope="module")
def long_events(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    path = tmp_path_factory.mktemp("long") / "long.jsonl"
    n = write_jsonl(simulate(SimConfig(users=3000, days=30, seed=5)).events, path)
    return path, n


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*CLI, *args], stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _read_counts(text: str) -> int:
    line = next(ln for ln in text.splitlines() if ln.startswith("Read "))
    return int(line.split()[1].replace(",", ""))


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, EXIT_SIGINT), (signal.SIGTERM, EXIT_SIGTERM)])
def test_a_signal_drains_a_file_run_prints_the_summary_and_the_rerun_reads_the_rest(
    long_events: tuple[Path, int], tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    events, total = long_events
    store, log = tmp_path / "s.chdb", tmp_path / "run.log"
    args = run_args(events, store, "--batch-events", "100", "--epoch-seconds", "0.2")
    proc = _start(args, log)
    deadline = time.monotonic() + 120
    while "starting: input=" not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    time.sleep(1.5)
    assert proc.poll() is None, "the run ended before the signal: make the input bigger"
    proc.send_signal(sig)
    assert proc.wait(120) == code
    first = log.read_text()
    assert f"{sig.name} received: draining" in first and "Traceback" not in first, first
    n1 = _read_counts(first)
    assert 0 < n1 < total
    rest = lifecycle(*args)
    assert rest.returncode == 0, rest.stderr
    assert n1 + _read_counts(rest.stdout) == total  # nothing read twice, nothing skipped
    assert f"Over 2 runs into this state: {total:,} events read, {total:,} applied" in rest.stdout  # both runs


def test_a_second_signal_stops_at_once_and_the_rerun_still_completes(
    long_events: tuple[Path, int], tmp_path: Path
) -> None:
    events, total = long_events
    store, log = tmp_path / "s.chdb", tmp_path / "run.log"
    args = run_args(events, store, "--batch-events", "100", "--epoch-seconds", "0.2")
    proc = _start(args, log)
    deadline = time.monotonic() + 120
    while "starting: input=" not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    assert proc.wait(60) in (-signal.SIGINT, EXIT_SIGINT)  # ended by the signal itself: the shell shows 130
    assert time.monotonic() - t0 < 20
    assert "SIGINT received again: stopping at once" in log.read_text()
    rest = lifecycle(*args)  # resumes from the last committed epoch
    assert rest.returncode == 0, rest.stderr
    assert _read_counts(rest.stdout) <= total


# ------------------------------------------------------------------ query


def test_a_query_that_does_not_parse_is_one_line_exit_2(filled_store: Path) -> None:
    proc = lifecycle("query", "--store", f"chdb://{filled_store}", "SELEC 1")
    assert proc.returncode == EXIT_USAGE
    line = one_error_line(proc, "query")
    assert "the store refused the query: Syntax error" in line and "(SYNTAX_ERROR)" in line


def test_a_format_clause_is_passed_through(filled_store: Path) -> None:
    proc = lifecycle("query", "--store", f"chdb://{filled_store}", "SELECT 1 AS one FORMAT JSON")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["data"] == [{"one": 1}]


def test_the_runbooks_dead_letter_query_shows_a_non_utf8_payload_escaped(filled_store: Path) -> None:
    sql = ("SELECT reason, source, partition, offset, payload FROM rejected_events FINAL ORDER BY received_at DESC "
           "LIMIT 20")  # fmt: skip
    proc = lifecycle("query", "--store", f"chdb://{filled_store}", "--format", "table", sql)
    assert proc.returncode == 0, proc.stderr
    assert "\\xff\\xfe broken" in proc.stdout and "malformed_json" in proc.stdout


def test_a_query_on_a_mistyped_chdb_path_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "lifecylce.chdb"
    proc = lifecycle("query", "--store", f"chdb://{missing}", "SELECT count() FROM user_scores")
    assert proc.returncode == EXIT_CONFIG
    assert f"no chDB store at {missing}" in one_error_line(proc, "query")
    assert not missing.exists()


def test_select_star_shows_every_value_not_ellipses(filled_store: Path) -> None:
    proc = lifecycle("query", "--store", f"chdb://{filled_store}", "--format", "table", "SELECT * FROM user_scores "
                     "LIMIT 1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout and "..." not in proc.stdout
    for column in ("user_id", "churn_risk", "reasons", "action_rule"):
        assert column in proc.stdout


# ------------------------------------------------------------------ usage


def test_a_command_group_without_its_subcommand_names_the_choices_exit_2() -> None:
    proc = lifecycle("db")
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.strip() == "lifecycle db: a subcommand is required: migrate, status (see lifecycle db --help)"



# ------------------------------------------------------------------ a failure inside the running flow


def test_a_store_lost_mid_run_ends_in_one_line_exit_4_without_a_traceback(
    long_events: tuple[Path, int], tmp_path: Path
) -> None:
    from tests.support.chdb_http import ChdbHttpServer

    log = tmp_path / "run.log"
    srv = ChdbHttpServer(tmp_path / "server").start()
    try:
        args = run_args(long_events[0], srv.url, "--batch-events", "200", "--epoch-seconds", "0.2")
        proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=log.open("wb"),
                                env={**os.environ, "LIFECYCLE_STORE_MAX_OUTAGE_SECONDS": "1"})  # fmt: skip
        deadline = time.monotonic() + 120
        while "starting: input=" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(1.0)
    finally:
        srv.stop()  # the server goes away while the run writes to it
    assert proc.wait(120) == EXIT_UNAVAILABLE, log.read_text()
    err = log.read_text(errors="replace")
    assert "Traceback" not in err and "stack backtrace" not in err, err
    assert err.strip().splitlines()[-1].startswith("lifecycle run: store: "), err
