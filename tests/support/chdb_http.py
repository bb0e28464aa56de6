"""ClickHouse's HTTP interface served by chDB, for tests of the clickhouse-connect code path.

No modern ClickHouse server can be installed on the test machines, but chDB is
the real ClickHouse engine in-process. :class:`ChdbHttpServer` puts one chDB
session behind a threaded HTTP server on loopback that speaks enough of
ClickHouse's HTTP protocol for clickhouse-connect 1.12 to connect, run commands
and queries, and insert - so :class:`pipelines.io.store.http.HttpStore` is tested
unchanged, over a real socket, against the real engine.

What it implements (see ``docs`` of the ClickHouse HTTP interface):

* ``GET /ping`` and ``GET /`` -> ``Ok.``.
* The query from the ``query`` URL parameter and/or the request body (for a
  multipart form: its ``query`` field); with both, the body follows the
  parameter after a newline, as ClickHouse does.
* ``INSERT INTO t [(cols)] [SETTINGS ...] FORMAT F`` followed by data (in the
  body, or the body after a ``query`` parameter): the statement is split from
  the data, which chDB's streaming inserter parses in format ``F`` (Native,
  Arrow, ArrowStream, RowBinary, TSV, ...).
* Output in the query's ``FORMAT`` clause, else ``default_format``, else
  ``TabSeparated``; ``X-ClickHouse-Format`` / ``-Summary`` / ``-Timezone`` /
  ``-Server-Display-Name`` / ``-Query-Id`` headers.
* Settings as URL parameters, checked as a real server checks them: a name
  ClickHouse does not have (not in ``system.settings``) is refused with Code 115
  (UNKNOWN_SETTING), a bad value with the engine's own error. Known ones apply to
  the one request (``SET``, reset to their defaults when a later request leaves
  them out). ``database`` selects the database, ``param_<name>`` binds
  ``{name:Type}`` query parameters.
* Authentication: ``users`` (name -> password, default ``{"default": ""}``) from
  HTTP Basic auth, ``X-ClickHouse-User``/``-Key`` headers or ``user``/``password``
  parameters; anything else is refused with Code 516 (AUTHENTICATION_FAILED).
* Sessions: each ``session_id`` gets its own chDB connection (its own settings and
  current database), and requests without one take a free connection from a pool,
  so requests from different clients run concurrently, as on a real server; a
  second request in a session that is busy is refused with Code 373
  (SESSION_IS_LOCKED), as a real server does.
* Asynchronous inserts (``async_insert=1``) as a real server runs them: with
  ``wait_for_async_insert=0`` the insert is acknowledged at once and applied
  ``async_insert_busy_timeout_ms`` later (default 200 ms) - lost if the server
  stops first; with ``wait_for_async_insert=1`` (the default) the answer waits
  for the flush. A retried async insert is deduplicated by its token only with
  ``async_insert_deduplicate=1`` (or ``deduplicate_insert='enable'``): the
  defaults of the servers before the unified ``deduplicate_insert``, which the
  product must survive.
* :attr:`ChdbHttpServer.log`: one :class:`Request` per request that reached the
  engine (user, session, settings, statement kind, INSERT target), so a test can
  tell who wrote what with which settings.
* Request bodies with ``Content-Encoding`` gzip / deflate / lz4 (and zstd / br
  where a codec is installed); responses compressed with the first supported
  ``Accept-Encoding`` when ``enable_http_compression`` is on (it is by default
  in chDB's settings, which the client reads at connect), exactly what
  clickhouse-connect negotiates with default settings.
* Errors as HTTP 500 with ``X-ClickHouse-Exception-Code`` and a
  ``Code: N. DB::Exception: ...`` body, which clickhouse-connect raises.

Fault injection for reliability tests: :meth:`ChdbHttpServer.stop` / ``start``
take the endpoint down and back on the same port (connection refused meanwhile),
and :meth:`ChdbHttpServer.slow_down` delays the answers to requests (all, or
only inserts; the next N or every one), as a slow or overloaded server would.
A delayed request is executed after its delay even when the client has given
up waiting, like a real server that commits an insert whose answer is lost.

Not implemented: session timeouts, external data tables,
ClickHouse's own block compression (``compress=1`` / ``decompress=1``), progress
headers. chDB allows one data directory per process, so at most one server
(or other chDB connection) is open in a process at a time.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import logging
import re
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP as HTTP_POLICY
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

log = logging.getLogger(__name__)

# URL parameters of the HTTP interface that are not settings.
_TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "user",
        "password",
        "quota_key",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "role",
        "stacktrace",
        "close_session",
        "enable_http_compression",
        "http_native_compression_disable_checksumming_on_decompress",
    }
)

# `INSERT INTO target [(cols)] [SETTINGS ...] FORMAT Name` then the data. After the format name ClickHouse
# skips spaces/tabs, one optional CR and one optional LF: the data starts right after (binary data may
# itself begin with whitespace bytes, so nothing more may be skipped).
_INSERT_HEAD = re.compile(
    rb"\A\s*(INSERT\s+INTO\s+(?:TABLE\s+)?[\w.`\"]+\s*(?:\([^()]*\))?\s*(?:SETTINGS\s+[^\n]*?)?)"
    rb"\s*FORMAT\s+(\w+)[ \t\f]*\r?\n?",
    re.IGNORECASE | re.DOTALL,
)
_INSERT_HEAD_WINDOW = 1 << 20
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)(?:\s+SETTINGS\s+.*)?\s*;?\s*\Z", re.IGNORECASE | re.DOTALL)
_RESULT_STATEMENT = re.compile(r"\A\s*(?:\(\s*)*(?:SELECT|WITH|SHOW|DESC|DESCRIBE|EXISTS|EXPLAIN|CHECK)\b", re.I)
_USE_STATEMENT = re.compile(r"\A\s*USE\s", re.IGNORECASE)
_ERROR_CODE = re.compile(r"Code:\s*(\d+)\.\s*")
_ERROR_NAME = re.compile(r"\(([A-Z][A-Z0-9_]+)\)\s*\Z")

_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNames": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
}

# HTTP status of an error answer, as ClickHouse's HTTP handler maps exception codes (the rest: 500).
_HTTP_STATUS = {115: 400, 62: 400, 516: 403}

STD_EXCEPTION = 1001
NOT_IMPLEMENTED = 48


class ServerError(Exception):
    """An error to return to the client as ClickHouse would: code, message, symbolic name."""

    def __init__(self, code: int, message: str, name: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.name = name

    @classmethod
    def from_exception(cls, err: BaseException) -> ServerError:
        """Keep the ``Code: N. DB::Exception: ...`` of an engine error; wrap anything else."""
        if isinstance(err, ServerError):
            return err
        text = str(err).strip()
        m = _ERROR_CODE.search(text)
        if m is None:
            return cls(STD_EXCEPTION, f"{type(err).__name__}: {text}", "STD_EXCEPTION")
        message = text[m.end() :].removeprefix("DB::Exception: ")
        name = _ERROR_NAME.search(message)
        if name is not None:
            message = message[: name.start()].rstrip().removesuffix(".")
        return cls(int(m.group(1)), message, name.group(1) if name else "")

    def body(self, version: str) -> bytes:
        name = f" ({self.name})" if self.name else ""
        return f"Code: {self.code}. DB::Exception: {self}.{name} (version {version})\n".encode()


# --------------------------------------------------------------------------- compression


def _codecs() -> tuple[dict[str, Callable[[bytes], bytes]], dict[str, Callable[[bytes], bytes]]]:
    """(compressors, decompressors) by HTTP content-coding name, for the codecs installed here."""
    comp: dict[str, Callable[[bytes], bytes]] = {
        "gzip": lambda b: gzip.compress(b, compresslevel=1),
        "deflate": lambda b: zlib.compress(b, 1),
    }
    decomp: dict[str, Callable[[bytes], bytes]] = {
        "gzip": gzip.decompress,
        "x-gzip": gzip.decompress,
        "deflate": zlib.decompress,
    }
    try:
        import lz4.frame

        comp["lz4"] = lz4.frame.compress
        decomp["lz4"] = lz4.frame.decompress
    except ImportError:
        pass
    zstd: Any = None
    for name in ("compression.zstd", "backports.zstd", "zstandard"):
        try:
            zstd = __import__(name, fromlist=["compress"])
            break
        except ImportError:
            continue
    if zstd is not None:
        comp["zstd"] = zstd.compress
        decomp["zstd"] = zstd.decompress
    try:
        import brotli

        comp["br"] = brotli.compress
        decomp["br"] = brotli.decompress
    except ImportError:
        pass
    return comp, decomp


_COMPRESS, _DECOMPRESS = _codecs()


# --------------------------------------------------------------------------- engine


class _Session:
    """One chDB connection: a ClickHouse session with its own settings and current database.

    ``lock`` is held while a request runs in the session (a real server runs one query per
    session at a time).
    """

    def __init__(self, conn: Any, defaults: dict[str, str]) -> None:
        self.conn = conn
        self.defaults = defaults
        self.lock = threading.Lock()
        self.applied: dict[str, str] = {}
        self.database: str | None = "default"
        self.last_used = time.monotonic()

    # Called with the lock held.
    def prepare(self, params: dict[str, str]) -> None:
        """Switch to the request's database and settings (only what differs from the last request)."""
        if self.conn is None:
            raise ServerError(210, "server is stopped", "NETWORK_ERROR")
        wanted = _settings(params)
        for key in wanted:
            if key not in self.defaults:
                raise ServerError(115, f"Unknown setting '{key}'", "UNKNOWN_SETTING")
        for key in [k for k in self.applied if k not in wanted]:
            self.conn.query(f"SET {key} = DEFAULT")
            del self.applied[key]
        for key, value in wanted.items():
            if self.applied.get(key) != value:
                try:
                    self.conn.query(f"SET {key} = {_quote(value)}")
                except Exception as err:
                    self.applied.pop(key, None)
                    raise ServerError.from_exception(err) from err
                self.applied[key] = value
        database = params.get("database") or "default"
        if database != self.database:
            try:
                self.conn.query(f"USE {_quote_ident(database)}")
            except Exception as err:
                self.database = None
                raise ServerError.from_exception(err) from err
            self.database = database

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class _Engine:
    """chDB at one data directory, one connection per session (chDB runs connections concurrently)."""

    MAX_SESSIONS = 64

    def __init__(self, path: Path, config_file: Path | None = None) -> None:
        from chdb.state import sqlitelike

        path.mkdir(parents=True, exist_ok=True)
        self._target = str(path) if config_file is None else f"{path}?config-file={config_file.resolve()}"
        self._connect = sqlitelike.Connection
        conn: Any = self._connect(self._target)
        version, tz = conn.query("SELECT version(), timezone()", "TabSeparated").bytes().decode().rstrip().split("\t")
        self.version = version
        self.timezone = tz
        rows = conn.query("SELECT name, value FROM system.settings", "TabSeparated").bytes().decode()
        self.defaults: dict[str, str] = dict(
            line.split("\t", 1)
            for line in rows.splitlines()
            if "\t" in line  # TSV-escaped, compared as such
        )
        self.lock = threading.Lock()  # guards the session tables, not the queries
        self.idle: list[_Session] = [_Session(conn, self.defaults)]
        self.sessions: dict[str, _Session] = {}
        self.closed = False

    def acquire(self, session_id: str) -> _Session:
        """The request's session, locked for it: ``session_id``'s own, else a free pooled one."""
        with self.lock:
            if self.closed:
                raise ServerError(210, "server is stopped", "NETWORK_ERROR")
            if session_id:
                session = self.sessions.get(session_id)
                if session is None:
                    self._evict()
                    session = self.sessions[session_id] = _Session(self._connect(self._target), self.defaults)
            else:
                session = self.idle.pop() if self.idle else _Session(self._connect(self._target), self.defaults)
        if not session.lock.acquire(blocking=False):
            raise ServerError(373, f"Session {session_id} is locked by a concurrent client", "SESSION_IS_LOCKED")
        session.last_used = time.monotonic()
        return session

    def release(self, session: _Session, session_id: str) -> None:
        session.lock.release()
        if not session_id:
            with self.lock:
                if self.closed:
                    session.close()
                else:
                    self.idle.append(session)

    def _evict(self) -> None:
        """Close the least recently used idle named session when there are too many (a timeout, early)."""
        if len(self.sessions) < self.MAX_SESSIONS:
            return
        for sid, old in sorted(self.sessions.items(), key=lambda kv: kv[1].last_used):
            if old.lock.acquire(blocking=False):
                del self.sessions[sid]
                old.close()
                old.lock.release()
                return

    def close(self) -> None:
        """Close every session, waiting (a while) for the requests still running in them."""
        with self.lock:
            self.closed = True
            sessions = [*self.idle, *self.sessions.values()]
            self.idle, self.sessions = [], {}
        for session in sessions:
            locked = session.lock.acquire(timeout=10)
            session.close()
            if locked:
                session.lock.release()


def _settings(params: dict[str, str]) -> dict[str, str]:
    """The URL parameters of a request that are settings (not transport parameters or query parameters)."""
    return {k: v for k, v in params.items() if k not in _TRANSPORT_PARAMS and not k.startswith("param_")}


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


# --------------------------------------------------------------------------- HTTP


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], owner: ChdbHttpServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(addr, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def do_HEAD(self) -> None:  # noqa: N802
        self._reply(200, b"", {"Content-Type": "text/plain; charset=UTF-8"}, head=True)

    def _serve(self) -> None:
        owner = self.server.owner
        query_id = ""
        try:
            url = urlsplit(self.path)
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            query_id = params.get("query_id") or str(uuid.uuid4())
            body = self._read_body()
            if url.path in ("/ping", "/replicas_status") or (url.path == "/" and not body and "query" not in params):
                self._reply(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
                return
            if url.path != "/":
                self._reply(404, b"There is no handle " + url.path.encode() + b"\n", {})
                return
            params["user"] = owner.authenticate(*self._credentials(params))
            params.pop("password", None)
            body = self._decode_body(body)
            body = self._form_fields(body, params)
            if params.get("compress") == "1" or params.get("decompress") == "1":
                raise ServerError(NOT_IMPLEMENTED, "ClickHouse block compression (compress/decompress=1) is not served")
            out, headers = owner.execute(params, body, query_id)
        except Exception as err:
            serr = ServerError.from_exception(err)
            if not isinstance(err, ServerError) or serr.code == STD_EXCEPTION:
                log.debug("request failed", exc_info=True)
            self._reply(
                _HTTP_STATUS.get(serr.code, 500),
                serr.body(owner.version),
                {
                    "Content-Type": "text/plain; charset=UTF-8",
                    "X-ClickHouse-Exception-Code": str(serr.code),
                    "X-ClickHouse-Query-Id": query_id,
                    "X-ClickHouse-Server-Display-Name": owner.display_name,
                },
            )
            return
        headers["X-ClickHouse-Query-Id"] = query_id
        headers["X-ClickHouse-Server-Display-Name"] = owner.display_name
        if out and owner.compression_enabled(params):
            coding = _pick_encoding(self.headers.get("Accept-Encoding", ""))
            if coding:
                out = _COMPRESS[coding](out)
                headers["Content-Encoding"] = coding
        log.debug(
            "%s %s content-encoding=%s -> %d bytes, %s",
            self.command,
            (params.get("query") or body[:60].decode(errors="replace")).replace("\n", " ")[:80],
            self.headers.get("Content-Encoding"),
            len(out),
            headers.get("Content-Encoding", "identity"),
        )
        self._reply(200, out, headers)

    def _credentials(self, params: dict[str, str]) -> tuple[str, str]:
        """(user, password) as ClickHouse reads them: Basic auth, ``X-ClickHouse-User``/``-Key``, URL parameters."""
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except ValueError as err:
                raise ServerError(516, "Authentication failed: bad Authorization header", "AUTHENTICATION_FAILED") from err  # noqa: E501
            return user or "default", password
        user = self.headers.get("X-ClickHouse-User") or params.get("user") or "default"
        return user, self.headers.get("X-ClickHouse-Key") or params.get("password") or ""

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _decode_body(self, body: bytes) -> bytes:
        coding = (self.headers.get("Content-Encoding") or "").strip().lower()
        if not body or coding in ("", "identity", "none"):
            return body
        if coding not in _DECOMPRESS:
            raise ServerError(NOT_IMPLEMENTED, f"Unsupported Content-Encoding: {coding}", "NOT_IMPLEMENTED")
        try:
            return _DECOMPRESS[coding](body)
        except Exception as err:
            raise ServerError(271, f"Cannot decompress {coding} request body: {err}", "CANNOT_DECOMPRESS") from err

    def _form_fields(self, body: bytes, params: dict[str, str]) -> bytes:
        """Move the text fields of a multipart form (query, param_*) into ``params``; the body becomes empty."""
        ctype = self.headers.get("Content-Type", "")
        if not ctype.startswith("multipart/form-data"):
            return body
        msg = BytesParser(policy=HTTP_POLICY).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename():
                raise ServerError(NOT_IMPLEMENTED, f"external data ({name}) is not served", "NOT_IMPLEMENTED")
            payload = part.get_payload(decode=True)
            params[str(name)] = payload.decode() if isinstance(payload, bytes) else ""
        return b""

    def _reply(self, status: int, out: bytes, headers: dict[str, str], *, head: bool = False) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        self.send_header("Keep-Alive", "timeout=30")
        self.end_headers()
        if out and not head:
            self.wfile.write(out)


def _pick_encoding(accept: str) -> str | None:
    for item in accept.split(","):
        name = item.split(";", 1)[0].strip().lower()
        if name in _COMPRESS:
            return name
    return None


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True, slots=True)
class Request:
    """What the server saw of one request: who sent it, in which session, with which settings.

    ``table`` is the target of an INSERT (empty for anything else).
    """

    user: str
    session_id: str
    settings: dict[str, str]
    table: str


def _insert_target(stmt: str) -> str:
    m = re.match(r"\s*INSERT\s+INTO\s+(?:TABLE\s+)?([\w.`\"]+)", stmt, re.IGNORECASE)
    return m.group(1).strip("`\"") if m else ""


def _on(value: str) -> bool:
    return value.strip().lower() in ("1", "true")


class ChdbHttpServer:
    """ClickHouse's HTTP interface over chDB at ``path``, on ``host:port`` (0: a free port).

    ``users`` maps user names to passwords (default: ``default`` without one); ``config_file`` is a
    ClickHouse server config for the engine (``remote_servers``, ``macros``: a local cluster).
    ``start()`` / ``stop()`` are idempotent; after the first start the port is
    fixed, so a stopped server restarts on the same URL (with the same data).
    ``stop()`` also drops open client connections and closes the chDB session,
    releasing the data directory.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        database: str = "default",
        display_name: str = "chdb-http",
        users: Mapping[str, str] | None = None,
        config_file: str | Path | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.path = Path(path)
        #: (certificate chain, key): serve https, as a server behind TLS does
        self.tls = tls
        self.users = dict(users) if users is not None else {"default": ""}
        self.config_file = Path(config_file) if config_file is not None else None
        self.log: list[Request] = []
        self.timezone = ""
        self._pending: set[threading.Thread] = set()
        self.host = host
        self.port = port
        self.database = database
        self.display_name = display_name
        self.version = ""
        self.requests = 0
        self.delayed = 0
        self._delay = 0.0
        self._delay_left: int | None = None
        self._delay_inserts_only = False
        self._engine: _Engine | None = None
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()

    @property
    def url(self) -> str:
        """``http(s)://HOST:PORT/DATABASE``, the form :class:`pipelines.io.store.http.HttpStore` takes."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/{self.database}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> ChdbHttpServer:
        with self._state_lock:
            if self._httpd is not None:
                return self
            if self._engine is None:
                self._engine = _Engine(self.path, self.config_file)
                self.version = self._engine.version
                self.timezone = self._engine.timezone
            try:
                httpd = _HttpServer((self.host, self.port), self)
            except OSError:
                self._engine.close()
                self._engine = None
                raise
            self.port = httpd.server_address[1]
            if self.tls is not None:
                import ssl

                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
                httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"chdb-http:{self.port}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._state_lock:
            httpd, thread, engine = self._httpd, self._thread, self._engine
            self._httpd = self._thread = self._engine = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            with httpd.connections_lock:
                conns = list(httpd.connections)
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)
        if engine is not None:
            engine.close()

    close = stop

    def __enter__(self) -> ChdbHttpServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def slow_down(self, seconds: float, *, count: int | None = None, inserts_only: bool = False) -> None:
        """Delay the answer to the next ``count`` requests (``None``: every one) by ``seconds``.

        The delay comes before the request runs, inside its session: requests of other sessions are
        delayed side by side, as on an overloaded server, and a request in the same session meanwhile
        (a client's retry after its timeout) is refused with Code 373 (SESSION_IS_LOCKED), as a real
        server refuses it while the first query still runs.
        ``slow_down(0)`` ends it.
        """
        with self._state_lock:
            self._delay = seconds
            self._delay_left = count
            self._delay_inserts_only = inserts_only

    def _take_delay(self, is_insert: bool) -> float:
        with self._state_lock:
            if self._delay <= 0 or (self._delay_inserts_only and not is_insert) or self._delay_left == 0:
                return 0.0
            if self._delay_left is not None:
                self._delay_left -= 1
            self.delayed += 1
            return self._delay

    # ------------------------------------------------------------------ request execution

    def authenticate(self, user: str, password: str) -> str:
        """``user`` if ``password`` is theirs; else Code 516, naming neither the password nor which was wrong."""
        if self.users.get(user) != password:
            raise ServerError(
                516,
                f"{user}: Authentication failed: password is incorrect, or there is no user with such name",
                "AUTHENTICATION_FAILED",
            )
        return user

    def compression_enabled(self, params: dict[str, str]) -> bool:
        engine = self._engine
        default = engine.defaults.get("enable_http_compression", "0") if engine else "0"
        return params.get("enable_http_compression", default).lower() in ("1", "true")

    def execute(self, params: dict[str, str], body: bytes, query_id: str) -> tuple[bytes, dict[str, str]]:
        """Run one request; return the response body and headers, or raise :class:`ServerError`."""
        engine = self._engine
        if engine is None:
            raise ServerError(210, "server is stopped", "NETWORK_ERROR")
        text = params.get("query", "")
        full = (text.encode() + b"\n" + body) if text and body else (body or text.encode())
        if not full.strip():
            raise ServerError(62, "Empty query", "SYNTAX_ERROR")
        bind = {k.removeprefix("param_"): v for k, v in params.items() if k.startswith("param_")}
        head = _INSERT_HEAD.match(full[:_INSERT_HEAD_WINDOW])
        delay = self._take_delay(head is not None)
        t0 = time.perf_counter()
        settings = _settings(params)
        table = _insert_target(head.group(1).decode()) if head is not None else ""
        with self._state_lock:
            self.requests += 1
            self.log.append(
                Request(params.get("user", "default"), params.get("session_id", ""), settings, table)
            )
        session_id = params.get("session_id", "")
        session = engine.acquire(session_id)
        try:
            if delay:  # the slow query holds its session: a retry in the same session meanwhile gets Code 373
                time.sleep(delay)
            if head is None:
                session.prepare(params)
                return self._query(session, full.decode(), params, bind, t0)
            stmt, fmt, data = head.group(1).decode(), head.group(2).decode(), full[head.end() :]
            if not _on(settings.get("async_insert", "0")):
                session.prepare(params)
                return self._insert(session, stmt, fmt, data, t0)
        finally:
            engine.release(session, session_id)
        return self._async_insert(params, stmt, fmt, data, t0)

    def _async_insert(
        self, params: dict[str, str], stmt: str, fmt: str, data: bytes, t0: float
    ) -> tuple[bytes, dict[str, str]]:
        """An ``async_insert=1`` request: buffered, flushed later; answered after the flush only if asked.

        The flush runs the insert in a session of its own with the request's settings, with deduplication
        as the server would apply it to an async insert (see the module docstring).
        """
        settings = _settings(params)
        self._validate_setting_names(params)  # refused before it is acknowledged, as a real server does
        mode = settings.get("deduplicate_insert", "backward_compatible_choice")
        legacy = _on(settings.get("async_insert_deduplicate", "0"))
        dedup = mode == "enable" or (mode == "backward_compatible_choice" and legacy)
        flush = {k: v for k, v in params.items() if k not in ("async_insert", "wait_for_async_insert", "session_id")}
        flush |= {"async_insert": "0", "deduplicate_insert": "enable" if dedup else "disable"}
        wait = _on(settings.get("wait_for_async_insert", "1"))
        busy = float(settings.get("async_insert_busy_timeout_ms", "200")) / 1000

        def apply() -> tuple[bytes, dict[str, str]]:
            engine = self._engine
            if engine is None:
                raise ServerError(210, "server is stopped", "NETWORK_ERROR")
            session = engine.acquire("")
            try:
                session.prepare(flush)
                return self._insert(session, stmt, fmt, data, t0)
            finally:
                engine.release(session, "")

        if wait:
            return apply()

        def later() -> None:
            time.sleep(busy)
            try:
                apply()
            except Exception:  # a real server logs it in system.asynchronous_insert_log; the client never hears
                log.warning("async insert flush failed", exc_info=True)
            finally:
                with self._state_lock:
                    self._pending.discard(thread)

        thread = threading.Thread(target=later, name="chdb-http-async-flush", daemon=True)
        with self._state_lock:
            self._pending.add(thread)
        thread.start()
        headers = {"Content-Type": "text/plain; charset=UTF-8", "X-ClickHouse-Timezone": self.timezone}
        headers["X-ClickHouse-Summary"] = _summary(0, 0, 0, 0, 0, 0, time.perf_counter() - t0)
        return b"", headers

    def _defaults(self) -> dict[str, str]:
        engine = self._engine
        return engine.defaults if engine is not None else {}

    def _validate_setting_names(self, params: dict[str, str]) -> None:
        known = self._defaults()
        for key in _settings(params):
            if key not in known:
                raise ServerError(115, f"Unknown setting '{key}'", "UNKNOWN_SETTING")

    def flush_async_inserts(self, timeout: float = 10.0) -> None:
        """Wait until every acknowledged async insert has been applied (or has failed)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._state_lock:
                pending = list(self._pending)
            if not pending:
                return
            for thread in pending:
                thread.join(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(pending)} async inserts not flushed in {timeout} s")

    def _insert(self, session: _Session, stmt: str, fmt: str, data: bytes, t0: float) -> tuple[bytes, dict[str, str]]:
        headers = {"Content-Type": "text/plain; charset=UTF-8", "X-ClickHouse-Timezone": self.timezone}
        if not data:
            headers["X-ClickHouse-Summary"] = _summary(0, 0, 0, 0, 0, 0, time.perf_counter() - t0)
            return b"", headers
        try:
            with session.conn.send_insert(stmt, fmt) as ins:
                ins.append(data)
                res = ins.finish()
        except Exception as err:
            raise ServerError.from_exception(err) from err
        headers["X-ClickHouse-Summary"] = _summary(
            0, 0, res.rows_written, res.bytes_written, 0, 0, time.perf_counter() - t0
        )
        return b"", headers

    def _query(
        self, session: _Session, sql: str, params: dict[str, str], bind: dict[str, str], t0: float
    ) -> tuple[bytes, dict[str, str]]:
        m = _TRAILING_FORMAT.search(sql)
        fmt = m.group(1) if m else params.get("default_format") or "TabSeparated"
        try:
            res = session.conn.query(sql, fmt, params=bind or None)
        except Exception as err:
            raise ServerError.from_exception(err) from err
        if _USE_STATEMENT.match(sql):
            session.database = None  # the session's database changed under us: switch back on the next request
        out = res.bytes()
        headers = {
            "Content-Type": _CONTENT_TYPES.get(fmt, "application/octet-stream"),
            "X-ClickHouse-Timezone": session.applied.get("session_timezone", self.timezone),
            "X-ClickHouse-Summary": _summary(
                res.rows_read(),
                res.bytes_read(),
                res.rows_written(),
                res.bytes_written(),
                0,
                len(out),
                time.perf_counter() - t0,
            ),
        }
        if out or _RESULT_STATEMENT.match(sql):
            headers["X-ClickHouse-Format"] = fmt
        return out, headers


def _summary(
    read_rows: int,
    read_bytes: int,
    written_rows: int,
    written_bytes: int,
    result_rows: int,
    result_bytes: int,
    elapsed: float,
) -> str:
    return json.dumps(
        {
            "read_rows": str(read_rows),
            "read_bytes": str(read_bytes),
            "written_rows": str(written_rows),
            "written_bytes": str(written_bytes),
            "total_rows_to_read": str(read_rows),
            "result_rows": str(result_rows),
            "result_bytes": str(result_bytes),
            "elapsed_ns": str(int(elapsed * 1e9)),
        },
        separators=(",", ":"),
    )
