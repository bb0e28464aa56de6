"""The ``lifecycle`` command line.

Every ``run`` flag overrides one field of :class:`~pipelines.settings.Settings`,
and its help shows the ``LIFECYCLE_*`` env var behind it. Exit codes: 0 ok,
2 usage or configuration error, 1 runtime failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipelines.core.rules import RuleError
from pipelines.flow.runner import shard_config
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lifecycle", description="Real-time user-lifecycle scoring.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)

    fields = Settings.model_fields
    run = sub.add_parser("run", help="run the streaming flow")
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
        "--summary-json",
        type=Path,
        default=None,
        metavar="PATH",
        help="write the run's counters (events in, applied, duplicates, opted out, rejected by reason, rows "
        "written by table) to PATH as JSON when the run ends",
    )

    sim = sub.add_parser("simulate", help="write a simulated event stream (NDJSON) and its ground truth")
    sim.add_argument("--users", type=int, default=50_000)
    sim.add_argument("--days", type=int, default=30)
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2026, 10, 1), help="YYYY-MM-DD")
    sim.add_argument("--horizon-days", type=int, default=30, help="days simulated for ground-truth labels")
    sim.add_argument("--out", required=True, help="events file (.jsonl or .jsonl.gz) or kafka://HOST:PORT/TOPIC")
    sim.add_argument(
        "--partitions", type=int, default=None, help="partitions of a kafka:// topic created by this run (default 1)"
    )
    sim.add_argument("--truth", type=Path, help="ground-truth CSV (default: OUT with .truth.csv)")

    from pipelines.cli.model import register as register_model

    register_model(sub)

    from pipelines.cli.db import register as register_db

    register_db(sub)

    from pipelines.cli.rescore import register as register_scoring

    register_scoring(sub)

    q = sub.add_parser("query", help="run SQL against the store and print the result")
    q.add_argument("sql")
    q.add_argument("--store", default=None, help="store URL [env: LIFECYCLE_STORE]")

    return p


def _settings(overrides: dict[str, Any]) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pipelines.cli.summary import print_summary
    from pipelines.flow.runner import open_migrated_store, run_pipeline

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
        from pipelines.flow.runner import install_graceful_stop

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
                on_source=lambda n: progress.update(task, total=n),
                on_batch=lambda n: progress.advance(task, n),
            )
    else:
        result = run_pipeline(s)
    if args.summary_json is not None:
        import dataclasses
        import json

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
    import signal
    import socket
    import subprocess
    import time

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
    if s.recovery_dir is not None:
        from pipelines.flow.runner import ensure_recovery_dir

        ensure_recovery_dir(s.recovery_dir, s.processes)  # one partition per process, before any starts
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
        from pipelines.flow.runner import open_migrated_store

        store = open_migrated_store(s)
        try:
            rows = store.query("SELECT count() AS users FROM user_scores FINAL").to_pylist()
            console.print(f"user_scores: {rows[0]['users']:,} users (FINAL)")
        finally:
            store.close()
    return rc


def _cmd_simulate(args: argparse.Namespace) -> int:
    from pipelines.offline.simulate import SimConfig, simulate
    from pipelines.offline.simulate_io import write_jsonl, write_truth_csv

    if args.out.startswith("kafka://"):
        from pipelines.offline.simulate_io import simulate_to_kafka

        config = {k: v.get_secret_value() for k, v in _settings({}).kafka_config.items()}  # LIFECYCLE_KAFKA_CONFIG
        n = simulate_to_kafka(
            args.out,
            users=args.users,
            days=args.days,
            seed=args.seed,
            partitions=args.partitions,
            config=config,
            start=args.start,
            horizon_days=args.horizon_days,
            truth_path=args.truth,
        )
        truth = f" and wrote ground truth to {args.truth}" if args.truth else ""
        print(f"produced {n:,} events to {args.out}{truth}")
        return 0
    args.out = Path(args.out)
    res = simulate(
        SimConfig(users=args.users, days=args.days, seed=args.seed, start=args.start, horizon_days=args.horizon_days)
    )
    n = write_jsonl(res.events, args.out)
    truth = args.truth or args.out.with_name(args.out.name.split(".")[0] + ".truth.csv")
    write_truth_csv(res.truth, truth)
    print(f"wrote {n:,} events to {args.out} and ground truth for {res.truth.height:,} users to {truth}")
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipelines.io.store.url import open_store

    s = _settings({"store": args.store})
    store = open_store(s.store, user=s.store_user, password=s.store_password.get_secret_value())
    try:
        res = store.query(args.sql)
    finally:
        store.close()
    t = Table()
    for c in res.column_names:
        t.add_column(c)
    for row in res.to_pylist():
        t.add_row(*(str(v) for v in row.values()))
    Console().print(t)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        # While the store is down, the HTTP client libraries warn on every failed attempt; the sink logs one
        # line when the outage starts and one when it ends (pipelines/io/store/retry.py), which is what operators need.
        for noisy in ("urllib3", "clickhouse_connect"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    handlers = {"run": _cmd_run, "simulate": _cmd_simulate, "query": _cmd_query}
    try:
        if getattr(args, "func", None) is not None:
            return int(args.func(args))
        return handlers[args.cmd](args)
    except ValidationError as err:
        print(f"lifecycle: configuration error:\n{err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"lifecycle: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
