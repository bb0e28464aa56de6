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
from typing import Any, TypeVar

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
        373,  # SESSION_IS_LOCKED: the retry of a timed-out query while the server still runs the first
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)


# Settings of every insert. optimize_on_insert = 0: a ReplacingMergeTree would otherwise sort and collapse
# each block by its key at insert, a second pass over the rows; FINAL (and background merges) collapse
# duplicates anyway, so skipping it changes no answer (measured: ~1.5x rows/s on 200k-row blocks into chDB).
# distributed_foreground_insert = 1: an insert into a Distributed table (sql/cluster) returns only after every
# shard committed its part, with the block's deduplication token; in the background mode the server answers
# once the block is queued on its disk, and the sink would flush "committed" rows before the epoch commits
# that a lost node never delivers. It changes nothing for a plain MergeTree table.
INSERT_SETTINGS: dict[str, Any] = {"optimize_on_insert": 0, "distributed_foreground_insert": 1}
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

    def query_raw(self, sql: str, *, params: Params | None = None, fmt: str | None = "TabSeparated") -> bytes:
        """Run a query and return the engine's own output in ``fmt``; ``None``: ``sql`` has its own FORMAT clause."""
        raise StoreError(f"{type(self).__name__} cannot return raw query output")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection."""


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


def _text_params(params: Params | None) -> dict[str, str] | None:
    return {k: format_param(v) for k, v in params.items()} if params else None
