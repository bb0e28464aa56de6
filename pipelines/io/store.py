"""The ClickHouse store behind one small interface, with two backends.

* :class:`ChdbStore` - the embedded engine (chDB), the zero-setup default. One
  process per data directory (chDB holds a file lock), so it serves
  single-process runs.
* :class:`HttpStore` - a ClickHouse server through clickhouse-connect.

Both take Arrow tables and insert them as one block per call. Delivery
semantics: :meth:`Store.insert` returns only after the block is committed, and
raises otherwise; the pipeline's tables are ReplacingMergeTree keyed so that
inserting the same rows again (a replay after a crash) changes nothing visible
under ``FINAL``. Both backends apply the same DDL from ``sql/``.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa

log = logging.getLogger(__name__)


class StoreError(Exception):
    """A store operation failed; the message names the table or statement."""


class Store(ABC):
    """Where scores, transitions and dead letters go."""

    @abstractmethod
    def command(self, sql: str) -> None:
        """Run a statement that returns nothing (DDL, mutations)."""

    @abstractmethod
    def insert(self, table: str, data: pa.Table) -> None:
        """Insert ``data`` (columns named as in the table) as one block; committed on return."""

    @abstractmethod
    def query(self, sql: str) -> pa.Table:
        """Run a query and return the result as an Arrow table."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection."""

    def migrate(self, sql_dir: Path) -> list[str]:
        """Apply every ``*.sql`` file of ``sql_dir`` in name order; return the files applied.

        Statements must be idempotent (``IF NOT EXISTS``); numbered migrations
        with a record of what ran are the job of ``lifecycle db migrate``.
        """
        files = sorted(sql_dir.glob("*.sql"))
        if not files:
            raise StoreError(f"no .sql files in {sql_dir}")
        for f in files:
            for i, stmt in enumerate(split_statements(f.read_text())):
                try:
                    self.command(stmt)
                except Exception as err:
                    raise StoreError(f"{f.name}: statement {i + 1} failed: {err}") from err
        return [f.name for f in files]


def split_statements(text: str) -> list[str]:
    """Split a SQL file on ``;`` at line ends, dropping ``--`` comment lines."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", body) if s.strip()]


class ChdbStore(Store):
    """chDB (embedded ClickHouse) at a data directory."""

    def __init__(self, path: str | Path) -> None:
        from chdb.state import sqlitelike

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlitelike.Connection(str(self.path))
        except Exception as err:
            raise StoreError(
                f"cannot open chDB store at {self.path}: {err} "
                "(chDB opens one data directory per process at a time, and one process per directory)"
            ) from err

    def command(self, sql: str) -> None:
        try:
            self._conn.query(sql)
        except Exception as err:
            raise StoreError(f"chDB: {err}") from err

    def insert(self, table: str, data: pa.Table) -> None:
        if data.num_rows == 0:
            return
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, data.schema) as writer:
            writer.write_table(data)
        cols = ", ".join(f"`{c}`" for c in data.column_names)
        try:
            with self._conn.send_insert(f"INSERT INTO {table} ({cols})", "ArrowStream") as ins:
                ins.append(sink.getvalue().to_pybytes())
                ins.finish()
        except Exception as err:
            raise StoreError(f"chDB insert into {table} ({data.num_rows} rows) failed: {err}") from err

    def query(self, sql: str) -> pa.Table:
        try:
            return self._conn.query(sql, "Arrowtable")
        except Exception as err:
            raise StoreError(f"chDB: {err}") from err

    def close(self) -> None:
        self._conn.close()


class HttpStore(Store):
    """A ClickHouse server over HTTP(S) via clickhouse-connect."""

    def __init__(self, url: str, *, user: str = "default", password: str = "") -> None:
        import clickhouse_connect

        u = urlparse(url)
        database = u.path.strip("/") or "default"
        self.database = database
        try:
            self._client = clickhouse_connect.get_client(
                host=u.hostname or "localhost",
                port=u.port or (8443 if u.scheme == "https" else 8123),
                username=u.username or user,
                password=u.password or password,
                secure=u.scheme == "https",
                database=database,
            )
        except Exception as err:
            # the URL may carry a password: name only host and port
            raise StoreError(f"cannot connect to ClickHouse at {u.hostname}:{u.port}: {err}") from err

    def command(self, sql: str) -> None:
        try:
            self._client.command(sql)
        except Exception as err:
            raise StoreError(f"ClickHouse: {err}") from err

    def insert(self, table: str, data: pa.Table) -> None:
        if data.num_rows == 0:
            return
        try:
            self._client.insert_arrow(table, data)
        except Exception as err:
            raise StoreError(f"ClickHouse insert into {table} ({data.num_rows} rows) failed: {err}") from err

    def query(self, sql: str) -> pa.Table:
        try:
            return self._client.query_arrow(sql)
        except Exception as err:
            raise StoreError(f"ClickHouse: {err}") from err

    def close(self) -> None:
        self._client.close()


def open_store(url: str, *, user: str = "default", password: str = "") -> Store:
    """``chdb://PATH`` -> :class:`ChdbStore`; ``http(s)://HOST:PORT/DB`` -> :class:`HttpStore`."""
    if url.startswith("chdb://"):
        return ChdbStore(url.removeprefix("chdb://"))
    if url.startswith(("http://", "https://")):
        return HttpStore(url, user=user, password=password)
    raise StoreError(f"unsupported store URL {url!r}: use chdb://PATH or http(s)://HOST:PORT/DB")
