r"""``lifecycle query``: SQL against the store, printed as clickhouse-client would.

* ``--format table|TSV|CSV|JSONEachRow|Vertical`` (or any ClickHouse output format): ``table`` is a
  terminal table drawn here; every other format is the engine's own output, byte for byte. Without
  ``--format``, a terminal gets the table and a pipe or file gets ``TSV`` (no box drawing in data).
* A ``FORMAT`` clause in the SQL wins: the engine's output is passed through as it is.
* ``--param NAME=VALUE`` binds ``{NAME:Type}`` server-side (never pasted into the SQL text).
* ``--file PATH`` (or the name of a shipped query in ``sql/queries/``, e.g. ``--file at_risk_vips``)
  runs a file instead of the SQL argument.
* Binary columns (a dead letter's raw payload) show as text with undecodable bytes escaped (``\xff``).
* A chDB store that does not exist is refused, never created.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pyarrow as pa
from rich.console import Console
from rich.table import Table

from pipelines.cli.errors import UsageError, root_reason
from pipelines.cli.preflight import open_checked
from pipelines.io.store.base import StoreError
from pipelines.settings import Settings

QUERIES = Path(__file__).resolve().parents[2] / "sql" / "queries"
_FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+[A-Za-z][A-Za-z0-9]*\b", re.IGNORECASE)
_STRINGS_AND_COMMENTS = re.compile(r"'(?:[^'\\]|\\.)*'|--[^\n]*|/\*.*?\*/", re.DOTALL)
#: --format names clickhouse-client users type, and the ClickHouse format each one is
FORMATS = {"tsv": "TabSeparated", "csv": "CSV", "jsoneachrow": "JSONEachRow", "vertical": "Vertical"}


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``query`` to the ``lifecycle`` subcommands."""
    q = sub.add_parser("query", help="run SQL against the store and print the result")
    q.add_argument("sql", nargs="?", help="the query (or --file)")
    q.add_argument(
        "--file",
        "-f",
        default=None,
        help=f"run this .sql file, or a shipped query by name ({', '.join(shipped_queries())})",
    )
    q.add_argument(
        "--format",
        default=None,
        help="table | TSV | CSV | JSONEachRow | Vertical | any ClickHouse output format "
        "(default: table on a terminal, TSV otherwise)",
    )
    q.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="bind the query parameter {NAME:Type} server-side (repeat for several)",
    )
    q.add_argument("--store", default=None, help="store URL [env: LIFECYCLE_STORE]")
    q.set_defaults(func=cmd_query)


def shipped_queries() -> list[str]:
    """Names of the queries in ``sql/queries/`` (``--file NAME``)."""
    return sorted(p.stem for p in QUERIES.glob("*.sql"))


def read_sql(args: argparse.Namespace) -> str:
    """The SQL of the argument or of ``--file`` (a path, or a shipped query's name); exactly one of them."""
    if (args.sql is None) == (args.file is None):
        raise UsageError("give the SQL as an argument or with --file, not both and not neither")
    if args.sql is not None:
        return str(args.sql)
    path = Path(args.file)
    if not path.is_file() and (QUERIES / f"{args.file}.sql").is_file():
        path = QUERIES / f"{args.file}.sql"
    if not path.is_file():
        raise UsageError(f"--file {args.file}: no such file, nor a shipped query ({', '.join(shipped_queries())})")
    return path.read_text(encoding="utf-8").strip().rstrip(";")


def parse_params(items: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` pairs -> {NAME: VALUE}; the values are text, parsed server-side by the declared type."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UsageError(f"--param {item!r}: expected NAME=VALUE (for {{NAME:Type}} in the query)")
        out[name] = value
    return out


def has_format_clause(sql: str) -> bool:
    """True if ``sql`` ends in its own ``FORMAT`` clause (outside strings and comments)."""
    return bool(_FORMAT_CLAUSE.search(_STRINGS_AND_COMMENTS.sub(" ", sql)))


def cmd_query(args: argparse.Namespace) -> int:
    """Run the query; print a table, the engine's output in a format, or the SQL's own FORMAT output."""
    sql = read_sql(args)
    params = parse_params(args.param)
    s = Settings(**({"store": args.store} if args.store else {}))
    fmt = args.format
    if fmt is None:
        fmt = "table" if sys.stdout.isatty() else "TSV"
    store = open_checked(s, must_exist=True)
    try:
        if has_format_clause(sql):
            out = store.query_raw(sql, params=params, fmt=None)
            sys.stdout.buffer.write(out)
            sys.stdout.buffer.flush()
            return 0
        if fmt.lower() != "table":
            out = store.query_raw(sql, params=params, fmt=FORMATS.get(fmt.lower(), fmt))
            sys.stdout.buffer.write(out)
            sys.stdout.buffer.flush()
            return 0
        res = store.query(sql, params=params)
    except StoreError as err:
        raise UsageError(f"the store refused the query: {root_reason(err)}") from err
    finally:
        store.close()
    print_table(Console(), res)
    return 0


def cell(value: object) -> str:
    """One value as text: bytes decoded as UTF-8 with the undecodable ones escaped, None as NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(cell(v) for v in value) + "]"
    return str(value)


def rows_of(res: pa.Table) -> list[list[str]]:
    """Every row as text; string columns are read as bytes, so a non-UTF-8 value cannot fail the query."""
    columns = []
    for col in res.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = col.cast(pa.binary() if pa.types.is_string(col.type) else pa.large_binary())
        columns.append([cell(v) for v in col.to_pylist()])
    return [list(r) for r in zip(*columns, strict=True)] if columns else []


def print_table(console: Console, res: pa.Table) -> None:
    """A table when it fits the terminal, else one block per row (``Vertical``), never columns of ``...``."""
    names = res.column_names
    rows = rows_of(res)
    widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]
    if sum(widths) + 3 * len(names) + 1 > console.width and len(names) > 1:
        pad = max(len(n) for n in names)
        for k, r in enumerate(rows, 1):
            console.print(f"Row {k}:\n" + "─" * 6, highlight=False, markup=False)
            for n, v in zip(names, r, strict=True):
                console.print(f"{n.ljust(pad)}: {v}", highlight=False, markup=False, soft_wrap=True)
            console.print()
    else:
        t = Table()
        for n in names:
            t.add_column(n, overflow="fold")
        for r in rows:
            t.add_row(*r)
        console.print(t)
    console.print(f"{len(rows):,} row{'s' if len(rows) != 1 else ''}", style="dim", highlight=False)
