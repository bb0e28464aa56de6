"""Numbered schema migrations, applied in order, with a record of what ran.

A migration is a file ``NNNN_name.sql`` (four digits, lower-case name) of
``;``-terminated statements. :func:`apply_migrations`:

1. reads and checks every file first (names, unique numbers), so a bad
   directory fails before anything changes;
2. creates ``schema_migrations`` if needed (from ``schema_migrations.sql`` in
   the directory when present - the cluster variant replicates it - else the
   single-node DDL below);
3. refuses, naming the file, if an applied migration's checksum no longer
   matches its file: an applied migration is history, and editing it would
   leave existing stores different from new ones. Change the schema with a new
   numbered file instead;
4. applies the pending files in number order, statement by statement, and
   records each file (name, checksum, applied_at) only after all of its
   statements succeeded. A failure stops the run; the failed file is not
   recorded, so the next run retries it - which is why every statement must be
   idempotent (``IF NOT EXISTS``, ``MODIFY SETTING``, ...).

No lock is taken: two runners racing apply the same idempotent statements and
both record the file, which ``FINAL`` collapses.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipelines.io.store.base import Store, StoreError, split_statements

log = logging.getLogger(__name__)

MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
BOOTSTRAP_FILE = "schema_migrations.sql"
BOOTSTRAP_SQL = """CREATE TABLE IF NOT EXISTS schema_migrations
(
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY name"""


class MigrationError(StoreError):
    """The migrations directory or the store's migration record is not in a state we can apply."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered file: its statements and the checksum that identifies its content."""

    number: int
    name: str
    text: str
    checksum: str

    @property
    def statements(self) -> list[str]:
        return split_statements(self.text)


def checksum(text: str) -> str:
    """SHA-256 of the file's text with line endings normalised (a CRLF checkout is the same file)."""
    return hashlib.sha256(text.replace("\r\n", "\n").encode()).hexdigest()


def discover(sql_dir: Path) -> list[Migration]:
    """The numbered migrations of ``sql_dir`` in order; raise on a stray or duplicate-numbered file."""
    if not sql_dir.is_dir():
        raise MigrationError(f"migrations directory {sql_dir} does not exist")
    found: list[Migration] = []
    for path in sorted(sql_dir.glob("*.sql")):
        if path.name == BOOTSTRAP_FILE:
            continue
        m = MIGRATION_FILE.match(path.name)
        if m is None:
            raise MigrationError(f"{path}: not a migration name (want NNNN_lower_case_name.sql)")
        text = path.read_text(encoding="utf-8")
        if not split_statements(text):
            raise MigrationError(f"{path}: no statements")
        found.append(Migration(int(m.group(1)), path.name, text, checksum(text)))
    if not found:
        raise MigrationError(f"no numbered .sql migrations in {sql_dir}")
    numbers = [m.number for m in found]
    dup = sorted({n for n in numbers if numbers.count(n) > 1})
    if dup:
        names = [m.name for m in found if m.number in dup]
        raise MigrationError(f"{sql_dir}: migration numbers used twice: {names}")
    return sorted(found, key=lambda m: m.number)


def applied_migrations(store: Store) -> dict[str, str]:
    """Name -> checksum of every migration recorded in the store (empty before the first run)."""
    exists = store.query(
        "SELECT count() AS n FROM system.tables WHERE database = currentDatabase() AND name = 'schema_migrations'"
    )
    if not exists.column("n")[0].as_py():
        return {}
    rows = store.query(
        "SELECT name, argMax(checksum, applied_at) AS checksum FROM schema_migrations GROUP BY name"
    ).to_pylist()
    return {r["name"]: r["checksum"] for r in rows}


def apply_migrations(store: Store, sql_dir: Path, *, now: Callable[[], float] = time.time) -> list[str]:
    """Apply the pending migrations of ``sql_dir`` in order; return the names applied by this call."""
    migrations = discover(sql_dir)
    bootstrap = sql_dir / BOOTSTRAP_FILE
    for stmt in split_statements(bootstrap.read_text(encoding="utf-8")) if bootstrap.is_file() else [BOOTSTRAP_SQL]:
        try:
            store.command(stmt)
        except StoreError as err:
            raise MigrationError(f"cannot create schema_migrations: {err}") from err

    done = applied_migrations(store)
    for m in migrations:
        if m.name in done and done[m.name] != m.checksum:
            raise MigrationError(
                f"{sql_dir / m.name} was changed after it was applied (recorded checksum {done[m.name][:12]}..., "
                f"file now {m.checksum[:12]}...): applied migrations must not be edited; restore the file and "
                "put the change in a new numbered migration"
            )
    known = {m.name for m in migrations}
    for name in sorted(set(done) - known):
        log.warning("migration %s is recorded in the store but not in %s (applied by a newer version?)", name, sql_dir)

    ran: list[str] = []
    for m in migrations:
        if m.name in done:
            continue
        log.info("applying migration %s", m.name)
        for i, stmt in enumerate(m.statements):
            try:
                store.command(stmt)
            except StoreError as err:
                raise MigrationError(f"{m.name}: statement {i + 1} failed: {err}") from err
        store.insert(
            "schema_migrations",
            pa.table(
                {
                    "name": pa.array([m.name], pa.string()),
                    "checksum": pa.array([m.checksum], pa.string()),
                    "applied_at": pa.array([int(now() * 1000)], pa.timestamp("ms", tz="UTC")),
                }
            ),
        )
        ran.append(m.name)
    return ran


def migrate(store: Store, sql_dir: Path) -> list[str]:
    """Apply the pending numbered migrations of ``sql_dir``; return every migration now in effect.

    :func:`apply_migrations` records what ran in ``schema_migrations`` and refuses a
    changed file; this returns all names, applied now or earlier, so callers that
    only want "the schema is current" need not care which run applied what.
    """
    apply_migrations(store, sql_dir)
    return [m.name for m in discover(sql_dir)]
