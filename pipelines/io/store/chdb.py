"""The embedded engine (chDB): the zero-setup default store.

One process per data directory (chDB holds a file lock), so it serves single-process runs; a cluster
writes to a ClickHouse server (:mod:`pipelines.io.store.http`). Delivery semantics are the
:class:`~pipelines.io.store.base.Store` contract's.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pipelines.io.store.base import _INSERT_CLAUSE, Params, Store, StoreError, _text_params, arrow_stream


class ChdbStore(Store):
    """chDB (embedded ClickHouse) at a data directory.

    ``config_file`` is a ClickHouse server config (XML/YAML) for this
    connection, e.g. ``remote_servers`` and ``macros`` to run the cluster DDL
    against a one-node local "cluster".
    """

    def __init__(self, path: str | Path, *, config_file: str | Path | None = None) -> None:
        from chdb.state import sqlitelike

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        target = str(self.path) if config_file is None else f"{self.path}?config-file={Path(config_file).resolve()}"
        try:
            self._conn = sqlitelike.Connection(target)
        except Exception as err:
            raise StoreError(
                f"cannot open chDB store at {self.path}: {err} "
                "(chDB opens one data directory per process at a time, and one process per directory)"
            ) from err

    def command(self, sql: str, *, params: Params | None = None) -> None:
        try:
            self._conn.query(sql, params=_text_params(params))
        except Exception as err:
            raise StoreError(f"chDB: {err}") from err

    def insert(self, table: str, data: pa.Table) -> None:
        # No deduplication token: the engine is in-process, so an insert cannot be committed and still
        # reported as failed. Identical blocks are still dropped by the tables' deduplication window.
        if data.num_rows == 0:
            return
        payload = arrow_stream(data)
        cols = ", ".join(f"`{c}`" for c in data.column_names)
        try:
            with self._conn.send_insert(
                f"INSERT INTO {table} ({cols}) SETTINGS {_INSERT_CLAUSE}", "ArrowStream"
            ) as ins:
                ins.append(payload)
                ins.finish()
        except Exception as err:
            raise StoreError(f"chDB insert into {table} ({data.num_rows} rows) failed: {err}") from err

    def query(self, sql: str, *, params: Params | None = None) -> pa.Table:
        try:
            return self._conn.query(sql, "Arrowtable", params=_text_params(params))
        except Exception as err:
            raise StoreError(f"chDB: {err}") from err

    def query_raw(self, sql: str, *, params: Params | None = None, fmt: str | None = "TabSeparated") -> bytes:
        try:  # a FORMAT clause in the SQL wins over the format argument
            return bytes(self._conn.query(sql, fmt or "TabSeparated", params=_text_params(params)).bytes())
        except Exception as err:
            raise StoreError(f"chDB: {err}") from err

    def close(self) -> None:
        self._conn.close()
