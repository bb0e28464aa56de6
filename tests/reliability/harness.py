"""Driving real ``lifecycle run`` processes for fault injection: inputs, starts, kills, progress.

Every pipeline runs as a subprocess (``python -m pipelines.cli.main run``), exactly as
deployed, so a ``kill -9`` is a real one and chDB's one-process-per-directory
lock is respected. Kills are triggered by observed progress (epochs committed
to the recovery store, inserts reaching the store, the recovery file being
written), never by a fixed sleep: the machine is small and shared, and a
timing assumption would make the tests flaky.

Used by the scenario tests and by the soak runner (:mod:`tests.reliability.soak`).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.reliability.oracle import Counters, Expected

#: Settings every scenario uses: small batches and short epochs, so that a run of a few
#: seconds crosses many batch, insert and snapshot boundaries where a fault can land.
BATCH_EVENTS = 300
SHARDS = 3
EPOCH_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class Stream:
    """An input: NDJSON lines (simulated events, bad lines and producer retries mixed in) and what they imply."""

    lines: list[bytes]
    expected: Expected
    bad: frozenset[bytes]  # payloads that must become dead letters
    duplicates: int  # lines that repeat an earlier event_id (dropped as duplicates)

    def write(self, path: Path) -> Path:
        path.write_bytes(b"".join(line + b"\n" for line in self.lines))
        return path


def make_stream(*, users: int, days: int, seed: int, bad_every: int = 997, dup_every: int = 499) -> Stream:
    """Simulated events with a malformed line or an unknown type every ``bad_every`` lines and a
    verbatim repeat (a producer retry: same event_id) every ``dup_every`` lines."""
    from pipelines.offline.simulate import SimConfig, simulate
    from pipelines.offline.simulate_io import iter_ndjson_batches

    sim = simulate(SimConfig(users=users, days=days, seed=seed))
    good = [line for batch in iter_ndjson_batches(sim.events, 50_000) for line in batch]
    rng = random.Random(seed)
    lines: list[bytes] = []
    bad: list[bytes] = []
    dups = 0
    for i, line in enumerate(good):
        lines.append(line)
        if i % dup_every == dup_every - 1:
            lines.append(line)
            dups += 1
        if i % bad_every == bad_every - 1:
            n = len(bad)
            if n % 2:
                payload = json.loads(line)
                payload.update(event_id=f"bad-{seed}-{n}", user_id=f"bad-user-{n}", type="teleport")
                junk = json.dumps(payload).encode()
            else:
                junk = line[: rng.randrange(10, len(line) - 5)]  # truncated: malformed JSON
            bad.append(junk)
            lines.append(junk)
    n_users = sim.events["user_id"].n_unique()
    expected = Expected(events=len(lines), dead_letters=len(bad), users=n_users)
    return Stream(lines, expected, frozenset(bad), dups)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def recovery_stamp(recovery: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime ns) of every recovery file: changes when a snapshot is being written."""
    out = []
    for f in sorted(recovery.glob("part-*")):
        try:
            st = f.stat()
        except FileNotFoundError:
            continue
        out.append((f.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


class Pipeline:
    """One ``lifecycle run`` subprocess; its output goes to files (a full pipe would stall it)."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        workdir: Path,
        env: dict[str, str] | None = None,
        metrics_port: int = 0,
        summary: bool = True,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        n = len(list(workdir.glob("run-*.log")))
        self.log_path = workdir / f"run-{n}.log"
        self.summary_path = workdir / f"run-{n}.summary.json" if summary else None
        self.metrics_port = metrics_port
        cmd = [sys.executable, "-m", "pipelines.cli.main", "run", *args, "--metrics-port", str(metrics_port)]
        if self.summary_path is not None:
            cmd += ["--summary-json", str(self.summary_path)]
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self, chars: int = 3000) -> str:
        return self.log_path.read_bytes()[-chars:].decode(errors="replace")

    def kill9(self) -> bool:
        """SIGKILL; True if the process was still running (the kill landed mid-run)."""
        if not self.alive():
            return False
        os.kill(self.proc.pid, signal.SIGKILL)
        self.wait(30)
        return True

    def sigterm(self) -> None:
        self._sigterm_sent = True
        os.kill(self.proc.pid, signal.SIGTERM)

    def wait(self, timeout_s: float = 300) -> int:
        try:
            rc = self.proc.wait(timeout_s)
        finally:
            if self.proc.poll() is not None:
                self._log.close()
        return rc

    def finish(self, timeout_s: float = 300) -> Counters | None:
        """Wait for a clean end (exit 0, or 143 after a drained SIGTERM; else AssertionError) and its counters."""
        rc = self.wait(timeout_s)
        clean = (0, 143) if getattr(self, "_sigterm_sent", False) else (0,)
        assert rc in clean, f"lifecycle run exited {rc}:\n{self.log()}"
        if self.summary_path is None:
            return None
        return Counters.from_summary(self.summary_path)

    def until(self, cond: Callable[[], bool], *, timeout_s: float = 120, what: str = "condition") -> bool:
        """Poll ``cond`` (every 20 ms) while the process runs; True once it holds, False if the process ended."""
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if cond():
                return True
            if time.monotonic() > deadline:
                self.kill9()
                raise AssertionError(f"{what} not reached within {timeout_s}s:\n{self.log()}")
            time.sleep(0.02)
        return False

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.alive():
            self.kill9()
        self._log.close()


def run_args(
    input_: str,
    store: str,
    *,
    recovery: Path | None = None,
    batch_events: int = BATCH_EVENTS,
    shards: int = SHARDS,
    epoch_seconds: float = EPOCH_SECONDS,
) -> list[str]:
    """``lifecycle run`` flags of the scenarios (the reference run takes the same, without recovery)."""
    args = ["--input", input_, "--store", store, "--batch-events", str(batch_events), "--shards", str(shards)]
    if recovery is not None:
        args += ["--recovery-dir", str(recovery), "--epoch-seconds", str(epoch_seconds)]
    return args
