"""``lifecycle run``: the streaming flow, in this process or as a local cluster of processes.

Every flag overrides one field of :class:`~pipelines.settings.Settings`, and its help shows the
``LIFECYCLE_*`` env var behind it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipelines.cli.summary import print_summary
from pipelines.core.rules import RuleError
from pipelines.flow.runner import (
    ensure_recovery_dir,
    install_graceful_stop,
    open_migrated_store,
    run_pipeline,
    shard_config,
)
from pipelines.settings import Settings

log = logging.getLogger("lifecycle")

# flag -> settings field, for `run`
_RUN_FLAGS: dict[str, str] = {
    "--input": "input",
    "--store": "store",
    "--model": "model_dir",
    "--device": "device",
    "--shards": "shards",
    "--batch-events": "batch_events",
    "--metrics-host": "metrics_host",
    "--metrics-port": "metrics_port",
    "--recovery-dir": "recovery_dir",
    "--epoch-seconds": "epoch_seconds",
    "--allowed-lateness-seconds": "allowed_lateness_seconds",
    "--taxonomy": "taxonomy",
    "--playbook": "playbook",
    "--idle-advance-seconds": "idle_advance_seconds",
    "--processes": "processes",
    "--process-id": "process_id",
    "--addresses": "addresses",
    "--sim-users": "sim_users",
    "--sim-days": "sim_days",
    "--sim-seed": "sim_seed",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``run`` to the ``lifecycle`` subcommands."""
    run = sub.add_parser("run", help="run the streaming flow")
    fields = Settings.model_fields
    for flag, name in _RUN_FLAGS.items():
        f = fields[name]
        run.add_argument(
            flag,
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{f.description} (default: {f.default}) [env: LIFECYCLE_{name.upper()}]",
        )
    run.add_argument("--summary", action="store_true", help="print a summary of the store after the run")
    run.add_argument("--progress", action="store_true", help="show a progress bar")
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


def _settings(overrides: dict[str, Any]) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def cmd_run(args: argparse.Namespace) -> int:

    s = _settings({name: getattr(args, name) for name in _RUN_FLAGS.values()})
    try:  # taxonomy and playbook files are validated before anything starts
        cfg = shard_config(s)
    except RuleError as err:
        print(f"lifecycle run: {err}", file=sys.stderr)
        return 2
    console = Console(stderr=False)
    if s.processes > 1 and s.addresses is None:
        return _run_local_cluster(args, s, console)
    console.print(
        f"lifecycle run: input={s.input} store={s.store} model={s.model_dir.name} device={s.device} "
        f"shards={s.shards} taxonomy={cfg.taxonomy.name}@{cfg.taxonomy.version} "
        f"playbook={cfg.playbook.name}@{cfg.playbook.version} metrics=http://{s.metrics_host}:{s.metrics_port}/metrics"
    )
    if s.input.startswith("kafka://"):
        # A Kafka run never ends by itself: SIGTERM drains it (README "Stopping"). File and
        # simulator runs end on their own; SIGTERM stops them at once (resume from the last epoch).

        install_graceful_stop()
    if args.progress:
        progress = Progress(
            TextColumn("[bold]events"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        task = progress.add_task("events", total=None)
        with progress:
            result = run_pipeline(
                s,
                rebuild_state=args.rebuild_state,
                on_source=lambda n: progress.update(task, total=n),
                on_batch=lambda n: progress.advance(task, n),
            )
    else:
        result = run_pipeline(s, rebuild_state=args.rebuild_state)
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps(dataclasses.asdict(result), sort_keys=True) + "\n")
    if args.summary:
        store = open_migrated_store(s)
        try:
            print_summary(console, store, result, s.store)
        finally:
            store.close()
    else:
        console.print(
            f"{result.events_in:,} events ({result.events_in / max(result.seconds, 1e-9):,.0f}/s), "
            f"rejected {sum(result.rejected.values()):,}, rows written {result.rows_written}"
        )
    return 0


def _run_local_cluster(args: argparse.Namespace, s: Settings, console: Any) -> int:
    """``--processes N``: start N Bytewax processes on loopback (one per process id) and wait.

    Every process runs the same flow; Bytewax exchanges shard batches between them
    and the single store partition writes from one of them. A failing process
    stops the others: a partial cluster would stall, not finish. A SIGTERM to this
    parent is forwarded to every member, so a Kafka cluster drains as one process
    does (:func:`pipelines.flow.runner.install_graceful_stop`: the flow ends when every
    member's partitions have ended).
    """

    ports = []
    for _ in range(s.processes):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    addresses = ",".join(f"127.0.0.1:{p}" for p in ports)
    base: list[str] = [sys.executable, "-m", "pipelines.cli.main", "run"]
    for flag, name in _RUN_FLAGS.items():
        value = getattr(args, name)
        if value is not None and name not in ("processes", "process_id", "addresses", "metrics_port"):
            base += [flag, str(value)]
    state = s.state_dir()
    if state is not None:
        if args.rebuild_state and state.exists():
            shutil.rmtree(state)  # started over on purpose: every member replays the input from scratch
        ensure_recovery_dir(state, s.processes)  # one partition per process, before any starts
    console.print(f"local cluster: {s.processes} processes at {addresses}")
    procs: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: object) -> None:
        live = [p for p in procs if p.poll() is None]
        log.warning("SIGTERM received: forwarding it to %d cluster process(es)", len(live))
        for p in live:
            p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    for i in range(s.processes):
        port = s.metrics_port + i if s.metrics_port else 0
        cmd = [*base, "--process-id", str(i), "--addresses", addresses, "--metrics-port", str(port)]
        procs.append(subprocess.Popen(cmd))
    rc = 0
    while any(p.poll() is None for p in procs):
        failed = [p for p in procs if p.returncode not in (None, 0)]
        if failed:
            rc = failed[0].returncode
            for p in procs:
                if p.poll() is None:
                    p.terminate()
        time.sleep(0.2)
    rc = rc or max(p.returncode for p in procs)
    if rc == 0 and args.summary:
        store = open_migrated_store(s)
        try:
            rows = store.query("SELECT count() AS users FROM user_scores FINAL").to_pylist()
            console.print(f"user_scores: {rows[0]['users']:,} users (FINAL)")
        finally:
            store.close()
    return rc
