"""``lifecycle check`` (and ``run --dry-run``): every precondition of a run, as a table, without running.

Like ``dbt debug``: settings, taxonomy and playbook, model and its feature schema, store reachable
and migrated (applied and pending migrations), input readable (files) or the Kafka topic with its
partition count, the Kafka output topics, the metrics port, the recovery store readable and
consistent with the store. Nothing is created: a chDB store that does not exist yet is reported as
new, not made. Exit 0 when every check passes, else the exit code of the first failure's class
(:mod:`pipelines.cli.errors`).
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from pipelines.cli.errors import EXIT_OK, CliError, ConfigError, DataError, classify
from pipelines.cli.flags import add_run_flags, settings_from_args
from pipelines.cli.preflight import (
    chdb_path,
    check_chdb_path,
    check_kafka,
    check_port,
    file_total,
    input_files,
    open_checked,
    store_label,
)
from pipelines.flow.recovery import check_trusted, recovery_parts
from pipelines.flow.runner import shard_config
from pipelines.io.store.migrations import applied_migrations, discover
from pipelines.scoring.scorer import Scorer
from pipelines.settings import Settings


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One row of the table: what was checked, whether it passed, what was found (or what to do)."""

    name: str
    ok: bool | None  # None: skipped (not configured)
    detail: str
    code: int = EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``check`` to the ``lifecycle`` subcommands (it takes the flags of ``run``)."""
    p = sub.add_parser("check", help="preflight: check store, model, taxonomy, input, ports and state; run nothing")
    add_run_flags(p)
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    """``lifecycle check``: the checks of the settings given by flags and ``LIFECYCLE_*``."""
    return run_checks(settings_from_args(args), console=Console())


def _try(name: str, fn: Callable[[], str]) -> CheckResult:
    try:
        return CheckResult(name, True, fn())
    except Exception as err:  # noqa: BLE001 - every check reports its failure as a row, never a traceback
        failure = err if isinstance(err, CliError) else classify(err)
        return CheckResult(name, False, str(failure), failure.code)


def store_status(s: Settings) -> tuple[list[str], list[str], list[str]]:
    """(applied, pending, unknown) migrations of the configured store; a new chDB store has all pending."""
    wanted = [m.name for m in discover(s.sql_dir)]
    if s.store.startswith("chdb://") and not chdb_path(s.store).exists():
        return [], wanted, []
    store = open_checked(s, must_exist=True)
    try:
        done = applied_migrations(store)
    finally:
        store.close()
    changed = [m.name for m in discover(s.sql_dir) if m.name in done and done[m.name] != m.checksum]
    if changed:
        raise ConfigError(
            f"migration(s) {', '.join(changed)} changed after they were applied: restore the file(s) and put the "
            "change in a new numbered migration"
        )
    return [n for n in wanted if n in done], [n for n in wanted if n not in done], sorted(set(done) - set(wanted))


def run_checks(s: Settings, *, console: Console) -> int:
    """Run every check of ``s``, print the table, return 0 or the first failure's exit code."""
    results: list[CheckResult] = []
    kafka_config = {k: v.get_secret_value() for k, v in s.kafka_config.items()}
    timeout = s.kafka_connect_timeout_seconds or 30.0

    def taxonomy() -> str:
        cfg = shard_config(s)
        return f"{cfg.taxonomy.name}@{cfg.taxonomy.version}, playbook {cfg.playbook.name}@{cfg.playbook.version}"

    results.append(_try("taxonomy and playbook", taxonomy))

    def model() -> str:
        sc = Scorer.from_dir(s.model_dir, device=s.device)
        return f"{sc.model_version} on {sc.device.type}, feature schema {sc.artifact.meta['schema_hash']} matches"

    results.append(_try("model", model))

    def store() -> str:
        applied, pending, unknown = store_status(s)
        where = store_label(s.store)
        if s.store.startswith("chdb://"):
            where = check_chdb_path(chdb_path(s.store), must_exist=False)
        out = f"{where}: {len(applied)} migration(s) applied, {len(pending)} pending"
        if pending:
            names = ", ".join(pending) if len(pending) <= 3 else f"{pending[0]} ... {pending[-1]}"
            out += f" ({names}; `run` applies them)"
        if unknown:
            out += f"; recorded but unknown here: {', '.join(unknown)} (a newer version wrote this store?)"
        return out

    results.append(_try("store", store))

    def source() -> str:
        if s.input == "simulate":
            return f"simulator: {s.sim_users:,} users x {s.sim_days} days (seed {s.sim_seed})"
        if s.input.startswith("kafka://"):
            parts = check_kafka(s.input, kafka_config, timeout_s=timeout)
            return ", ".join(f"topic {t}: {n} partition(s)" for t, n in parts.items())
        files = input_files(s.input)
        return f"{len(files)} file(s), {file_total(files)}"

    results.append(_try("input", source))
    for label, url in (("dead-letter topic", s.dead_letter_topic), ("transitions topic", s.transitions_topic)):
        if url is None:
            results.append(CheckResult(label, None, "not configured"))
        else:
            results.append(
                _try(label, lambda u=url: ", ".join(  # type: ignore[misc]
                    f"topic {t}: {n} partition(s)" for t, n in check_kafka(u, kafka_config, timeout_s=timeout).items()
                ))
            )  # fmt: skip
    results.append(_try("metrics port", lambda: check_port(s.metrics_host, s.metrics_port)))
    results.append(_try("recovery store", lambda: recovery_status(s)))

    table = Table(title="lifecycle check")
    for col in ("check", "status", "detail"):
        table.add_column(col, overflow="fold")
    for r in results:
        status = "[green]ok[/green]" if r.ok else "[dim]skip[/dim]" if r.ok is None else "[red]FAIL[/red]"
        table.add_row(r.name, status, r.detail)
    console.print(table)
    failed = [r for r in results if r.ok is False]
    if failed:
        console.print(f"{len(failed)} of {len(results)} checks failed: fix them before `lifecycle run`")
        return failed[0].code
    console.print("all checks passed")
    return EXIT_OK


def recovery_status(s: Settings) -> str:
    """The recovery store's partitions are readable sqlite files, and it agrees with the store."""
    state = s.state_dir()
    if state is None:
        return "not persisted (--persist-state false)"
    check_trusted(state)  # the snapshots are pickles: only this user may have written them
    parts = recovery_parts(state)
    if not parts:
        if _store_has_scores(s):
            raise ConfigError(
                f"no pipeline state at {state} but the store already holds scores: a run would refuse to start. "
                "Point --recovery-dir at the state of the runs that wrote them, or use run --rebuild-state"
            )
        return f"{state}: none yet (created by the first run)"
    for part in parts:
        try:
            with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True)) as db:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as err:
            raise DataError(f"recovery store {part} is unreadable ({err}): restore it from a backup") from err
    want = 1 if s.addresses is None else len(s.addresses.split(","))
    if s.addresses is None and len(parts) != want and s.processes == 1:
        return f"{state}: {len(parts)} partition(s) (written by a cluster of {len(parts)} processes?)"
    return f"{state}: {len(parts)} partition(s), readable"


def _store_has_scores(s: Settings) -> bool:
    if s.store.startswith("chdb://") and not chdb_path(s.store).exists():
        return False
    store = open_checked(s, must_exist=True)
    try:
        applied = applied_migrations(store)
        if not applied:
            return False
        rows = store.query("SELECT count() AS n FROM user_scores").to_pylist()
        return bool(rows and rows[0]["n"])
    finally:
        store.close()
