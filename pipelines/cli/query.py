"""``lifecycle query``: run SQL against the store and print the result."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from pipelines.io.store.url import open_store
from pipelines.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``query`` to the ``lifecycle`` subcommands."""
    q = sub.add_parser("query", help="run SQL against the store and print the result")
    q.add_argument("sql")
    q.add_argument("--store", default=None, help="store URL [env: LIFECYCLE_STORE]")

    q.set_defaults(func=cmd_query)


def cmd_query(args: argparse.Namespace) -> int:

    s = Settings(**({"store": args.store} if args.store else {}))
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
