"""``kill -9`` at chosen points, several times in one run, then resume from the recovery store:
the visible scores, transitions and dead letters equal those of an uninterrupted run.

Kill points, each triggered by observed progress rather than a sleep:

* mid-stream: a random few milliseconds after the recovery store committed more epochs
  (lands anywhere in decode, state update, scoring or a sink buffer);
* mid-insert, lost: the store receives an ``INSERT INTO user_scores`` and the pipeline
  dies before the store applied it (the epoch never commits: it must be replayed);
* mid-insert, applied but unacknowledged: the store applied the insert, the pipeline
  dies before the reply (the epoch never commits: the replay writes the rows again and
  ``FINAL`` must collapse them);
* mid-snapshot: the moment the recovery store's files change (Bytewax writing an epoch's
  snapshots or its commit).

The insert points need to see inside the store, so that scenario writes through
ClickHouse's HTTP interface to a chDB served by this test process
(:class:`tests.support.chdb_http.ChdbHttpServer`, with an insert hook); the
production ``HttpStore`` code path is unchanged.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.conftest import Reference
from tests.reliability.harness import Pipeline, Stream, recovery_stamp, run_args
from tests.reliability.oracle import assert_equivalent, capture_chdb, check_conservation
from tests.support.chdb_http import ChdbHttpServer, ServerError
from tests.support.recovery import committed_epoch

pytestmark = pytest.mark.integration

_TABLE = re.compile(r"INSERT\s+INTO\s+(?:`?\w+`?\.)?`?(\w+)`?", re.IGNORECASE)
InsertHook = Callable[[str, str], bool]


class HookedServer(ChdbHttpServer):
    """The test ClickHouse HTTP server with a hook around every insert.

    ``hook(table, phase)`` runs with ``phase`` "before" (the insert is not applied yet;
    returning True drops it) and "after" (applied, the reply not yet sent).
    """

    hook: InsertHook | None = None

    def _insert(self, engine: Any, stmt: str, fmt: str, data: bytes, t0: float) -> tuple[bytes, dict[str, str]]:
        m = _TABLE.search(stmt)
        table = m.group(1) if m else ""
        hook = self.hook
        if hook is not None and hook(table, "before"):
            raise ServerError(210, "connection lost (test fault)", "NETWORK_ERROR")
        out = super()._insert(engine, stmt, fmt, data, t0)
        if hook is not None:
            hook(table, "after")
        return out


def _kill_in_insert(server: HookedServer, pipe: Pipeline, *, nth: int, phase: str) -> None:
    """SIGKILL the pipeline inside its ``nth`` insert into user_scores, at ``phase``."""
    seen = 0
    fired = threading.Event()

    def hook(table: str, at: str) -> bool:
        nonlocal seen
        if table != "user_scores" or at != phase or fired.is_set():
            return False
        seen += 1
        if seen < nth:
            return False
        os.kill(pipe.pid, signal.SIGKILL)  # while the pipeline waits for this insert's reply
        fired.set()
        return True  # "before": the insert is lost with the process

    server.hook = hook
    try:
        pipe.until(fired.is_set, what=f"insert #{nth} into user_scores")
        assert fired.is_set(), f"the run ended before insert #{nth} ({phase}):\n{pipe.log()}"
        pipe.wait(30)
    finally:
        server.hook = None


def _kill_after_epochs(pipe: Pipeline, recovery: Path, epochs: int, rng: random.Random) -> None:
    """SIGKILL a random 0-150 ms after ``epochs`` more epochs were committed (anywhere mid-stream)."""
    start = committed_epoch(recovery)
    pipe.until(lambda: committed_epoch(recovery) >= start + epochs, what=f"{epochs} committed epochs")
    time.sleep(rng.uniform(0, 0.15))
    assert pipe.kill9(), f"the run ended before it could be killed: make the input bigger\n{pipe.log()}"


def _kill_while_snapshotting(pipe: Pipeline, recovery: Path, epochs: int) -> None:
    """SIGKILL the moment the recovery files change, once ``epochs`` more epochs were committed."""
    start = committed_epoch(recovery)
    pipe.until(lambda: committed_epoch(recovery) >= start + epochs, what=f"{epochs} committed epochs")
    before = recovery_stamp(recovery)
    deadline = time.monotonic() + 60
    while pipe.alive() and recovery_stamp(recovery) == before and time.monotonic() < deadline:
        time.sleep(0.0005)
    assert pipe.kill9(), f"the run ended before the snapshot kill:\n{pipe.log()}"


def test_kill9_mid_stream_mid_insert_and_mid_snapshot_resumes_to_reference_scores(
    file_stream: tuple[Stream, Path], file_reference: Reference, tmp_path: Path
) -> None:
    stream, events = file_stream
    recovery = tmp_path / "recovery"
    rng = random.Random(20261124)
    server = HookedServer(tmp_path / "store.chdb")
    server.start()
    try:
        args = run_args(str(events), server.url, recovery=recovery)

        def start() -> Pipeline:
            return Pipeline(args, workdir=tmp_path / "runs")

        # five kills must land before the input ends: each waits for little progress (the input is
        # ~60k events; an epoch is 0.2 s, a few thousand events on an idle machine)
        with start() as pipe:
            _kill_after_epochs(pipe, recovery, 2, rng)
        with start() as pipe:
            _kill_in_insert(server, pipe, nth=3, phase="before")
        with start() as pipe:
            _kill_in_insert(server, pipe, nth=2, phase="after")
        with start() as pipe:
            _kill_while_snapshotting(pipe, recovery, 1)
        with start() as pipe:
            _kill_after_epochs(pipe, recovery, 1, rng)
        epochs_before_last = committed_epoch(recovery)
        with start() as pipe:
            last = pipe.finish()
    finally:
        server.stop()
    assert last is not None
    # the last run resumed (it read only part of the input) and accounted for all it read
    assert 0 < last.events_in < len(stream.lines), last
    assert not check_conservation(last), check_conservation(last)
    assert committed_epoch(recovery) > epochs_before_last
    assert_equivalent(capture_chdb(tmp_path / "store.chdb"), file_reference.visible, expected=stream.expected)


def test_kill9_three_times_reading_kafka_resumes_to_reference_scores(
    kafka_input: tuple[Stream, str, Reference], tmp_path: Path
) -> None:
    stream, url, reference = kafka_input
    store, recovery = tmp_path / "store.chdb", tmp_path / "recovery"
    rng = random.Random(91)
    args = run_args(url, f"chdb://{store}", recovery=recovery)
    env = {"LIFECYCLE_KAFKA_EOF_EXIT": "true"}

    def start() -> Pipeline:
        return Pipeline(args, workdir=tmp_path / "runs", env=env)

    # little progress per kill, so that all three land before the end of the topic (~37k records)
    with start() as pipe:
        _kill_after_epochs(pipe, recovery, 2, rng)
    with start() as pipe:
        _kill_while_snapshotting(pipe, recovery, 1)
    with start() as pipe:
        _kill_after_epochs(pipe, recovery, 2, rng)
    with start() as pipe:
        last = pipe.finish()
    assert last is not None
    assert 0 < last.events_in < len(stream.lines), last
    assert not check_conservation(last), check_conservation(last)
    assert_equivalent(capture_chdb(store), reference.visible, expected=stream.expected)
