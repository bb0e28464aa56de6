"""``lifecycle run``: the streaming flow, in this process or as a local cluster of processes.

Every flag overrides one field of :class:`~pipelines.settings.Settings`, and its help shows the
``LIFECYCLE_*`` env var behind it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from models.artifact import load_artifact
from pipelines.cli.check import run_checks
from pipelines.cli.flags import _RUN_FLAGS, add_run_flags, settings_from_args
from pipelines.cli.logs import STDERR
from pipelines.cli.preflight import (
    check_kafka,
    check_port,
    input_files,
    open_checked,
    require_events,
    store_label,
)
from pipelines.cli.summary import end_of_run_line, print_summary
from pipelines.cli.totals import add_run, totals_line
from pipelines.core.features import FEATURE_NAMES, schema_hash
from pipelines.flow.runner import RunResult, ensure_recovery_dir, run_pipeline, shard_config
from pipelines.io.files import file_bytes
from pipelines.io.kafka.stop import request_stop
from pipelines.io.store.migrations import migrate
from pipelines.settings import Settings

log = logging.getLogger("lifecycle")


def member_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """A local cluster member's command line and environment: the run's flags travel as ``LIFECYCLE_*``.

    Never as arguments: a store URL may carry a password, and every local user can read a process's
    command line (``ps``); the environment of another user's process is not readable.
    """
    env = dict(os.environ)
    for name in _RUN_FLAGS.values():
        value = getattr(args, name, None)
        if value is not None and name not in ("processes", "process_id", "addresses", "metrics_port"):
            env[f"LIFECYCLE_{name.upper()}"] = str(value)
    return [sys.executable, "-m", "pipelines.cli.main", "run"], env


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``run`` to the ``lifecycle`` subcommands."""
    run = sub.add_parser("run", help="run the streaming flow")
    add_run_flags(run)
    run.add_argument("--summary", action="store_true", help="print a summary of the store after the run")
    run.add_argument(
        "--progress", action="store_true", help="show a progress bar on stderr (files: bytes read of the total, ETA)"
    )
    run.add_argument("--dry-run", action="store_true", help="run the preflight checks (`lifecycle check`) and stop")
    run.add_argument("-q", "--quiet", action="store_true", help="no start-up line")
    run.add_argument(
        "--rebuild-state",
        action="store_true",
        help="start from empty pipeline state on purpose: remove the state and replay the given input from scratch",
    )
    run.add_argument(
        "--summary-json",
        type=Path,
        default=None,
        metavar="PATH",
        help="write the run's counters (events in, applied, duplicates, opted out, rejected by reason, rows "
        "written by table) to PATH as JSON when the run ends",
    )

    run.set_defaults(func=cmd_run)


class StopSignals:
    """SIGINT and SIGTERM drain the run (every input ends at its next read); a second signal stops at once.

    A drain is what the end of a finite input is: pending scores are flushed, the sink writes
    everything buffered and Bytewax commits a final epoch whose snapshot holds each input's
    position, so a rerun with the same state continues exactly there. The first signal only
    sets the stop request (:func:`~pipelines.io.kafka.stop.request_stop`, polled by every
    source); a second one restores the default action and re-sends itself, so the process ends
    at once (still safe: the rerun resumes from the last committed epoch).
    """

    def __init__(self) -> None:
        self.received: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            log.warning("%s received again: stopping at once (a rerun resumes from the last committed epoch)", name)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        log.warning(
            "%s received: draining (inputs end now, pending scores are flushed, a final snapshot is committed); "
            "send it again to stop at once",
            name,
        )
        request_stop()

    @property
    def exit_code(self) -> int:
        return 128 + self.received if self.received is not None else 0


def _preflight(s: Settings) -> None:
    """What must hold before anything is created: a loadable model, a free metrics port, a readable input."""
    load_artifact(s.model_dir, expected_schema_hash=schema_hash(), expected_names=FEATURE_NAMES)
    check_port(s.metrics_host, s.metrics_port)
    config = {k: v.get_secret_value() for k, v in s.kafka_config.items()}
    if s.kafka_connect_timeout_seconds > 0:  # every broker the run reads from or writes to, within the timeout
        if s.input.startswith("kafka://"):
            check_kafka(s.input, config, timeout_s=s.kafka_connect_timeout_seconds)
        for url in (s.dead_letter_topic, s.transitions_topic):
            if url is not None:  # an output topic may be created by the broker on first write
                check_kafka(url, config, timeout_s=s.kafka_connect_timeout_seconds, must_exist=False)
    if s.input != "simulate" and not s.input.startswith("kafka://"):
        input_files(s.input)


def cmd_run(args: argparse.Namespace) -> int:
    """``lifecycle run``: check, open the store, run the flow, print the end-of-run line (or the summary)."""
    s = settings_from_args(args)
    cfg = shard_config(s)  # taxonomy and playbook files are validated before anything starts
    if args.dry_run:
        return run_checks(s, console=Console())
    console = Console(stderr=False)
    if s.processes > 1 and s.addresses is None:
        return _run_local_cluster(args, s, console)
    _preflight(s)
    store = open_checked(s)
    try:
        migrate(store, s.sql_dir)
    except BaseException:
        store.close()
        raise
    info = STDERR if not args.quiet else None
    if info is not None:
        info.print(
            f"starting: input={s.input} store={store_label(s.store)} model={s.model_dir.name} device={s.device} "
            f"shards={s.shards} taxonomy={cfg.taxonomy.name}@{cfg.taxonomy.version} "
            f"playbook={cfg.playbook.name}@{cfg.playbook.version} "
            + (f"metrics=http://{s.metrics_host}:{s.metrics_port}/metrics" if s.metrics_port else "metrics=off"),
            highlight=False,
            soft_wrap=True,
        )
    stop = StopSignals()
    stop.install()
    try:
        result = _run_with_progress(s, store, args)
    finally:
        store.close()
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps(dataclasses.asdict(result), sort_keys=True) + "\n")
    if args.summary and not stop.received:
        summary_store = open_checked(s)
        try:
            print_summary(console, summary_store, result, store_label(s.store))
        finally:
            summary_store.close()
    else:
        console.print(end_of_run_line(result), highlight=False, soft_wrap=True)
    totals = add_run(s.state_dir(), result)
    if totals is not None and totals_line(totals):
        console.print(totals_line(totals), highlight=False, soft_wrap=True)
    if stop.received:
        name = signal.Signals(stop.received).name
        log.warning("stopped by %s after a drain: a rerun with the same state continues where this one ended", name)
        return stop.exit_code
    if result.events_in == 0 and result.events_resumed == 0:
        log.warning("the input %s held no events: nothing was scored", s.input)
    require_events(result.events_in, result.rejected, s.input)
    return 0


def _run_with_progress(s: Settings, store: Any, args: argparse.Namespace) -> RunResult:
    if not args.progress:
        return run_pipeline(s, store=store, rebuild_state=args.rebuild_state)
    files = None if s.input == "simulate" or s.input.startswith("kafka://") else input_files(s.input)
    if files is not None:  # bytes read of the files' total: an honest ETA even before the first event is scored
        progress = Progress(
            TextColumn("[bold]input"),
            BarColumn(),
            DownloadColumn(binary_units=False),
            TransferSpeedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[events]} events"),
            console=STDERR,
            transient=False,
        )
        task = progress.add_task("input", total=sum(file_bytes(p) for p in files), events="0")
        seen = [0]

        def on_batch(n: int) -> None:
            seen[0] += n
            progress.update(task, events=f"{seen[0]:,}")

        def on_read(n: int, skipped: bool) -> None:
            if skipped:  # read by an earlier run (a resume): shown as done, kept out of the rate and the ETA
                done = next(t.completed for t in progress.tasks if t.id == task)
                progress.reset(task, completed=int(done) + n, events=f"{seen[0]:,}")
            else:
                progress.advance(task, n)

        with progress:
            return run_pipeline(
                s, store=store, rebuild_state=args.rebuild_state, on_batch=on_batch,
                on_read=on_read,
            )  # fmt: skip
    progress = Progress(
        TextColumn("[bold]events"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
        TimeRemainingColumn(), console=STDERR, transient=False,
    )  # fmt: skip
    task = progress.add_task("events", total=None)
    with progress:
        return run_pipeline(
            s, store=store, rebuild_state=args.rebuild_state,
            on_source=lambda n: progress.update(task, total=n), on_batch=lambda n: progress.advance(task, n),
        )  # fmt: skip


def _run_local_cluster(args: argparse.Namespace, s: Settings, console: Any) -> int:
    """``--processes N``: start N Bytewax processes on loopback (one per process id) and wait.

    Every process runs the same flow; Bytewax exchanges shard batches between them
    and the single store partition writes from one of them. A failing process
    stops the others: a partial cluster would stall, not finish. A SIGTERM to this
    parent is forwarded to every member, so a Kafka cluster drains as one process
    does (:class:`StopSignals`: the flow ends when every member's partitions have ended).
    """

    ports = []
    for _ in range(s.processes):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    addresses = ",".join(f"127.0.0.1:{p}" for p in ports)
    base, child_env = member_command(args)
    state = s.state_dir()
    if state is not None:
        if args.rebuild_state and state.exists():
            shutil.rmtree(state)  # started over on purpose: every member replays the input from scratch
        ensure_recovery_dir(state, s.processes)  # one partition per process, before any starts
    console.print(f"local cluster: {s.processes} processes at {addresses}")
    procs: list[subprocess.Popen[bytes]] = []
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        live = [p for p in procs if p.poll() is None]
        name = signal.Signals(signum).name
        log.warning("%s received: forwarding it to %d cluster process(es)", name, len(live))
        stopping.append(signum)
        for p in live:
            p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for i in range(s.processes):
        port = s.metrics_port + i if s.metrics_port else 0
        cmd = [*base, "--process-id", str(i), "--addresses", addresses, "--metrics-port", str(port)]
        # own process group: a Ctrl-C in the terminal reaches only this parent, which forwards it once
        # (a member that got it twice, from the terminal and from here, would stop at once, without a drain)
        procs.append(subprocess.Popen(cmd, process_group=0, env=child_env))
    rc = 0
    while any(p.poll() is None for p in procs):
        # a member that drained on a forwarded signal exits 128 + signal: the others are draining too
        clean = {0, *(128 + sig for sig in stopping)}
        failed = [p for p in procs if p.returncode is not None and p.returncode not in clean]
        if failed and not rc:
            rc = failed[0].returncode
            for p in procs:
                if p.poll() is None:
                    p.terminate()
        time.sleep(0.2)
    rc = rc or max(p.returncode for p in procs)
    if rc == 0 and args.summary:
        store = open_checked(s)
        try:
            rows = store.query("SELECT count() AS users FROM user_scores FINAL").to_pylist()
            console.print(f"user_scores: {rows[0]['users']:,} users (FINAL)")
        finally:
            store.close()
    return rc
