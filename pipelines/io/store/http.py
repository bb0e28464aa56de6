"""A ClickHouse server through clickhouse-connect.

Delivery semantics are the :class:`~pipelines.io.store.base.Store` contract's: an insert returns
only once committed, a retried block carries the same deduplication token, and transient server
errors (:func:`is_transient`) are the ones worth retrying. Credentials are never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa

from pipelines.io.store.base import (
    INSERT_SETTINGS,
    TRANSIENT_ERROR_CODES,
    Params,
    Store,
    StoreError,
    T,
    arrow_stream,
    dedup_token,
)

log = logging.getLogger(__name__)

# Async mode is safe only with both: answered after the flush (committed on return), and the retry of a block
# whose answer was lost dropped by its token (docs/schema.md, "Inserts").
ASYNC_INSERT_SETTINGS: dict[str, Any] = {"async_insert": 1, "wait_for_async_insert": 1, "async_insert_deduplicate": 1}


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
    writers into fewer parts (``async_insert=1``). It always waits for the
    flush (``wait_for_async_insert=1``), so :meth:`insert` still returns only
    once the rows are committed, and asks for deduplication of async inserts
    (``async_insert_deduplicate=1``): servers before the unified
    ``deduplicate_insert`` skip the token of an async insert without it, so a
    retry after a lost answer would write the block twice.
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
        ca_file: str | None = None,
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
        if ca_file is not None:
            options["ca_cert"] = ca_file  # a private CA; verification stays on
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
            settings |= ASYNC_INSERT_SETTINGS
        self._retrying(
            f"insert into {table} ({data.num_rows} rows)",
            lambda: self._client.raw_insert(table, data.column_names, payload, settings=settings, fmt="ArrowStream"),
        )

    def query(self, sql: str, *, params: Params | None = None) -> pa.Table:
        bound = dict(params) if params else None
        result: pa.Table = self._retrying("query", lambda: self._client.query_arrow(sql, parameters=bound))
        return result

    def query_raw(self, sql: str, *, params: Params | None = None, fmt: str | None = "TabSeparated") -> bytes:
        # clickhouse-connect appends "FORMAT fmt" when given one: None leaves the SQL's own clause alone
        bound = dict(params) if params else None
        out: bytes = self._retrying("query", lambda: self._client.raw_query(sql, parameters=bound, fmt=fmt))
        return out

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
