"""The ClickHouse store behind one small interface, with two backends.

* :class:`ChdbStore` - the embedded engine (chDB), the zero-setup default. One
  process per data directory (chDB holds a file lock), so it serves
  single-process runs.
* :class:`HttpStore` - a ClickHouse server through clickhouse-connect.

Both take Arrow tables and insert them as one block per call. Delivery
semantics: :meth:`Store.insert` returns only after the block is committed, and
raises otherwise. Writes are idempotent under replay at two levels:

1. A *retry* of the same block (the server committed it but the answer was
   lost) carries the same content-derived ``insert_deduplication_token``, and
   the server drops the second copy (tables keep a deduplication window).
2. A *replay* after a crash rebuilds rows with the same ``version``; every
   table is a ReplacingMergeTree, so they collapse under ``FINAL``.

Both backends apply the same numbered migrations (:mod:`pipelines.io.store.migrations`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import pyarrow as pa

log = logging.getLogger(__name__)
T = TypeVar("T")
Params = Mapping[str, Any]

# ClickHouse error codes worth a retry: the server (or a replica, or Keeper) was briefly unable to take
# the request, and the same request can succeed later. Anything else (syntax, unknown table, type
# mismatch, ...) fails the same way every time, so it is raised at once.
TRANSIENT_ERROR_CODES: frozenset[int] = frozenset(
    {
        3,  # UNEXPECTED_END_OF_FILE
        159,  # TIMEOUT_EXCEEDED
        164,  # READONLY (replica in read-only mode while Keeper reconnects)
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        236,  # ABORTED
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        252,  # TOO_MANY_PARTS
        279,  # ALL_CONNECTION_TRIES_FAILED
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)


# Settings of every insert. optimize_on_insert = 0: a ReplacingMergeTree would otherwise sort and collapse
# each block by its key at insert, a second pass over the rows; FINAL (and background merges) collapse
# duplicates anyway, so skipping it changes no answer (measured: ~1.5x rows/s on 200k-row blocks into chDB).
INSERT_SETTINGS: dict[str, Any] = {"optimize_on_insert": 0}
_INSERT_CLAUSE = ", ".join(f"{k} = {v}" for k, v in INSERT_SETTINGS.items())


class StoreError(Exception):
    """A store operation failed; the message names the table or statement.

    ``transient`` is the backend's verdict that the same call may succeed later (the server
    was unreachable, timed out or overloaded); the sink keeps retrying those
    (:mod:`pipelines.io.store.retry`) and raises everything else at once.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class Store(ABC):
    """Where scores, transitions and dead letters go.

    ``params`` bind ClickHouse query parameters (``{name:Type}`` in the SQL)
    from Python values: str, int, float, bool, date, datetime (aware, any
    zone), and lists of those.
    """

    @abstractmethod
    def command(self, sql: str, *, params: Params | None = None) -> None:
        """Run a statement that returns nothing (DDL, mutations)."""

    @abstractmethod
    def insert(self, table: str, data: pa.Table) -> None:
        """Insert ``data`` (columns named as in the table) as one block; committed on return."""

    @abstractmethod
    def query(self, sql: str, *, params: Params | None = None) -> pa.Table:
        """Run a query and return the result as an Arrow table."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection."""

    def migrate(self, sql_dir: Path) -> list[str]:
        """Apply the pending numbered migrations of ``sql_dir``; return every migration now in effect.

        The runner (:func:`pipelines.io.store.migrations.apply_migrations`) records what
        ran in ``schema_migrations`` and refuses a changed file; this returns
        all names, applied now or earlier, so callers that only want "the
        schema is current" need not care which run applied what.
        """
        from pipelines.io.store.migrations import apply_migrations, discover

        apply_migrations(self, sql_dir)
        return [m.name for m in discover(sql_dir)]


def split_statements(text: str) -> list[str]:
    """Split a SQL file on ``;`` at line ends, dropping ``--`` comment lines."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", body) if s.strip()]


def arrow_stream(data: pa.Table, *, compression: str | None = None) -> bytes:
    """``data`` as one Arrow IPC stream (what both backends send as ``FORMAT ArrowStream``).

    ``compression`` (``lz4``/``zstd``) compresses the buffers inside the stream:
    fewer bytes on the network to a server, at some CPU cost.
    """
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression) if compression else None
    with pa.ipc.new_stream(sink, data.schema, options=options) as writer:
        writer.write_table(data)
    return sink.getvalue().to_pybytes()


def dedup_token(table: str, payload: bytes) -> str:
    """A deduplication token derived from the block's content (table, schema and rows).

    The same rows serialised the same way give the same token, so a retry - or
    a resend of the same batch - is dropped by the server; different rows never
    share a token (SHA-256), so nothing distinct is ever dropped.
    """
    h = hashlib.sha256(table.encode())
    h.update(b"\0")
    h.update(payload)
    return h.hexdigest()


def format_param(value: Any) -> str:
    """A Python value as the text ClickHouse parses for a ``{name:Type}`` query parameter.

    Parameter values are read in the escaped (TSV) text format; arrays as
    literals with quoted elements. Datetimes are written in UTC, so queries
    declare them as ``DateTime64(3, 'UTC')``.
    """
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} as a query parameter: give it a time zone")
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ",".join(_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return str(value)


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, dt.date):
        return "'" + format_param(value) + "'"
    return format_param(value)


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

    def close(self) -> None:
        self._conn.close()


def _text_params(params: Params | None) -> dict[str, str] | None:
    return {k: format_param(v) for k, v in params.items()} if params else None


class HttpStore(Store):
    """A ClickHouse server over HTTP(S) via clickhouse-connect.

    Inserts send the block as one Arrow stream with an
    ``insert_deduplication_token`` derived from its content, and are retried on
    transient errors (network failures, and the server codes in
    :data:`TRANSIENT_ERROR_CODES`) with exponential backoff: waits of
    ``backoff_seconds * 2**k`` capped at ``max_backoff_seconds``, at most
    ``retries`` retries, then :class:`StoreError` (``transient=True`` when the
    last error was transient: these in-place retries absorb blips of a second
    or two; the sink waits out longer outages, :mod:`pipelines.io.store.retry`). A
    retry cannot duplicate rows: if the failed attempt did commit, the server
    drops the retry by its token. Queries are retried the same way (they change
    nothing); commands (DDL, mutations) are not, since not every statement is
    safe to repeat.

    ``async_insert=True`` lets the server buffer small inserts from many
    writers into fewer parts (``async_insert=1``); it always waits for the
    flush (``wait_for_async_insert=1``), so :meth:`insert` still returns only
    once the rows are committed.
    """

    def __init__(
        self,
        url: str,
        *,
        user: str = "default",
        password: str = "",
        async_insert: bool = False,
        retries: int = 4,
        backoff_seconds: float = 0.1,
        max_backoff_seconds: float = 5.0,
        timeout_seconds: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``timeout_seconds``: socket read timeout of one request (clickhouse-connect's
        ``send_receive_timeout``, default 300 s); a timed-out insert is retried like a refused one.
        """
        import clickhouse_connect

        if retries < 0 or backoff_seconds < 0 or max_backoff_seconds < 0:
            raise ValueError("retries and backoff times must be >= 0")
        u = urlparse(url)
        database = u.path.strip("/") or "default"
        self.database = database
        self.async_insert = async_insert
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._sleep = sleep
        self._where = f"{u.hostname}:{u.port}"  # the URL may carry a password: name only host and port
        options: dict[str, Any] = {} if timeout_seconds is None else {"send_receive_timeout": timeout_seconds}
        try:
            self._client = clickhouse_connect.get_client(
                host=u.hostname or "localhost",
                port=u.port or (8443 if u.scheme == "https" else 8123),
                username=u.username or user,
                password=u.password or password,
                secure=u.scheme == "https",
                database=database,
                **options,
            )
        except Exception as err:
            raise StoreError(
                f"cannot connect to ClickHouse at {self._where}: {err}", transient=is_transient(err)
            ) from err
        # as clickhouse-connect's own insert_arrow: compress Arrow buffers with the codec it negotiated
        wc = getattr(self._client, "write_compression", None)
        self._ipc_compression = wc if wc in ("lz4", "zstd") else None

    def command(self, sql: str, *, params: Params | None = None) -> None:
        try:
            self._client.command(sql, parameters=dict(params) if params else None)
        except Exception as err:
            raise StoreError(f"ClickHouse: {err}", transient=is_transient(err)) from err

    def insert(self, table: str, data: pa.Table, *, token: str | None = None) -> None:
        """Insert one block; ``token`` overrides the content-derived deduplication token."""
        if data.num_rows == 0:
            return
        payload = arrow_stream(data, compression=self._ipc_compression)
        settings: dict[str, Any] = {
            **INSERT_SETTINGS,
            "insert_deduplication_token": token or dedup_token(table, payload),
        }
        if self.async_insert:
            settings |= {"async_insert": 1, "wait_for_async_insert": 1}
        self._retrying(
            f"insert into {table} ({data.num_rows} rows)",
            lambda: self._client.raw_insert(table, data.column_names, payload, settings=settings, fmt="ArrowStream"),
        )

    def query(self, sql: str, *, params: Params | None = None) -> pa.Table:
        bound = dict(params) if params else None
        result: pa.Table = self._retrying("query", lambda: self._client.query_arrow(sql, parameters=bound))
        return result

    def close(self) -> None:
        self._client.close()

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """Run ``call``; on a transient error wait and try again, at most ``retries`` more times."""
        attempt = 0
        while True:
            try:
                return call()
            except Exception as err:
                transient = is_transient(err)
                if not transient or attempt >= self.retries:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise StoreError(
                        f"ClickHouse {what} at {self._where} failed{tries}: {err}", transient=transient
                    ) from err
                wait = min(self.max_backoff_seconds, self.backoff_seconds * 2**attempt)
                # debug, not warning: a blip is retried here in a second or two; a longer outage is
                # logged once by whoever keeps retrying (the sink: pipelines/io/store/retry.py)
                log.debug(
                    "ClickHouse %s failed (%s); retry %d/%d in %.2f s", what, err, attempt + 1, self.retries, wait
                )
                self._sleep(wait)
                attempt += 1


def is_transient(err: BaseException) -> bool:
    """Whether a clickhouse-connect error may succeed on retry (network, overload, replica trouble)."""
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    if isinstance(err, OperationalError):  # connection refused/reset, timeouts, 429/503/504 after its own retries
        return True
    if isinstance(err, DatabaseError):
        code = getattr(err, "code", None)
        return isinstance(code, int) and code in TRANSIENT_ERROR_CODES
    return False


def open_store(url: str, *, user: str = "default", password: str = "") -> Store:
    """``chdb://PATH`` -> :class:`ChdbStore`; ``http(s)://HOST:PORT/DB`` -> :class:`HttpStore`."""
    if url.startswith("chdb://"):
        return ChdbStore(url.removeprefix("chdb://"))
    if url.startswith(("http://", "https://")):
        return HttpStore(url, user=user, password=password)
    raise StoreError(f"unsupported store URL {url!r}: use chdb://PATH or http(s)://HOST:PORT/DB")


def record_model_version(store: Store, meta: Mapping[str, Any], *, now: Callable[[], float] = time.time) -> None:
    """Register a model artifact (its ``artifact.json`` metadata) in ``model_versions``.

    Called once per pipeline start, so every ``model_version`` found in
    ``user_scores`` can be traced to its schema, horizon, training cut-off and
    validation metrics.
    """
    row = {
        "model_version": str(meta["model_version"]),
        "schema_hash": str(meta.get("schema_hash", "")),
        "horizon_days": int(meta.get("horizon_days", 0)),
        "as_of": str(meta.get("as_of", "")),
        "created_at": str(meta.get("created_at", "")),
        "data_fingerprint": str(meta.get("data_fingerprint", "")),
        "metrics": json.dumps(meta.get("metrics", {}), sort_keys=True),
    }
    table = pa.table({k: pa.array([v], pa.uint16() if k == "horizon_days" else pa.string()) for k, v in row.items()})
    table = table.append_column("registered_at", pa.array([int(now() * 1000)], pa.timestamp("ms", tz="UTC")))
    store.insert("model_versions", table)
