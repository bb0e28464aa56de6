"""What a command checks before it starts anything, each check failing as one :class:`~pipelines.cli.errors.CliError`.

Shared by ``lifecycle run`` (which checks the metrics port, the input and the store before the flow
starts, so nothing is created when something is missing) and ``lifecycle check`` (which runs every
check and prints a table). Every check either returns what it found (for the table) or raises.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from pipelines.cli.errors import ConfigError, DataError, UnavailableError, redact, root_reason
from pipelines.io.files import NDJSON_SUFFIXES, TABLE_SUFFIXES, file_bytes
from pipelines.io.kafka.clientlog import KAFKA_CLIENT_LOG
from pipelines.io.kafka.url import parse_kafka_url
from pipelines.io.store.base import Store, StoreError
from pipelines.io.store.url import open_store
from pipelines.settings import Settings

#: Input formats ``run`` refuses by name (it reads NDJSON, CSV and Parquet, as ``train`` and ``score`` do).
_OTHER_FORMATS = {
    ".tsv": "TSV", ".xlsx": "Excel", ".xls": "Excel", ".avro": "Avro", ".orc": "ORC", ".zip": "zip",
    ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd", ".tar": "tar", ".arrow": "Arrow IPC", ".feather": "Feather",
}  # fmt: skip



def store_label(url: str) -> str:
    """The store URL as it may be shown: without user and password."""
    return redact(url)


def check_port(host: str, port: int) -> str:
    """The metrics endpoint's address is free (or disabled with 0)."""
    if port == 0:
        return "disabled (--metrics-port 0)"
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UnavailableError(
                    f"metrics port {host}:{port} is already in use (another lifecycle run?): choose another with "
                    "--metrics-port (LIFECYCLE_METRICS_PORT), or 0 to disable the endpoint"
                ) from err
            raise ConfigError(f"cannot bind the metrics endpoint to {host}:{port}: {err.strerror}") from err
    return f"http://{host}:{port}/metrics free"


def input_files(spec: str) -> list[Path]:
    """The files of a file ``--input`` (comma-separated), each an existing NDJSON file, else one line why not."""
    paths = [Path(p) for p in spec.split(",") if p]
    for p in paths:
        if p.is_dir():
            raise ConfigError(
                f"--input {p} is a directory: give its files, comma-separated (e.g. --input "
                f"{p / 'part-1.jsonl'},{p / 'part-2.jsonl'})"
            )
        if not p.exists():
            raise ConfigError(f"--input {p}: no such file (nor 'simulate' or a kafka://HOST:PORT/TOPIC URL)")
        name = p.name.lower()
        if name.endswith(NDJSON_SUFFIXES + TABLE_SUFFIXES):
            continue
        other = next((fmt for suf, fmt in _OTHER_FORMATS.items() if name.endswith(suf)), None)
        raise ConfigError(
            f"--input {p}: {'a ' + other + ' file' if other else 'an unknown format'}; `run` reads events as NDJSON "
            "(.jsonl, .ndjson, .json), CSV (.csv) or Parquet (.parquet), NDJSON and CSV optionally gzip-compressed "
            "(.gz): convert it to one of them"
        )
    return paths


def file_total(paths: list[Path]) -> str:
    """``1.2 MiB`` of input (uncompressed), for the check table."""
    total = float(sum(file_bytes(p) for p in paths))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if total < 1024 or unit == "TiB":
            return f"{total:,.0f} {unit}" if unit == "B" else f"{total:.1f} {unit}"
        total /= 1024
    return ""


def kafka_log_config() -> dict[str, Any]:
    """Client options that route librdkafka's log through the project's logger (at its own levels)."""
    return {"logger": KAFKA_CLIENT_LOG}


def check_kafka(url: str, config: Mapping[str, Any], *, timeout_s: float, must_exist: bool = True) -> dict[str, int]:
    """The topic of ``url`` exists on a reachable broker: topic -> partition count (0: missing, if allowed)."""
    bootstrap, topic = parse_kafka_url(url)
    admin = AdminClient({"bootstrap.servers": bootstrap, **kafka_log_config(), **config})
    try:
        md = admin.list_topics(timeout=timeout_s)  # all topics: asking for one may auto-create it
    except KafkaException as err:
        kerr = err.args[0] if err.args else err
        reason = kerr.str() if hasattr(kerr, "str") else str(kerr)
        raise UnavailableError(
            f"kafka: no broker answered at {bootstrap} within {timeout_s:g} s ({reason}): is the broker up and "
            "the address right? (--kafka-connect-timeout-seconds / LIFECYCLE_KAFKA_CONNECT_TIMEOUT_SECONDS "
            "waits longer, 0 waits forever)"
        ) from err
    meta = md.topics.get(topic)
    if meta is None and not must_exist:
        return {topic: 0}
    if meta is None:
        raise ConfigError(f"kafka: topic {topic!r} does not exist on {bootstrap}: create it, or check --input")
    if meta.error is not None:
        raise UnavailableError(f"kafka: topic {topic!r} on {bootstrap}: {meta.error.str()}")
    return {topic: len(meta.partitions)}


def chdb_path(url: str) -> Path:
    return Path(url.removeprefix("chdb://"))


def check_chdb_path(path: Path, *, must_exist: bool) -> str:
    """A chDB store directory that can be opened by this process: creatable, not a file, not in use."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"chDB store {path} is a file, not a directory: choose another --store chdb://PATH")
    if not path.exists():
        if must_exist:
            raise ConfigError(
                f"no chDB store at {path} (a query does not create one): check --store (LIFECYCLE_STORE); "
                "`lifecycle run` or `lifecycle db migrate` creates it"
            )
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ConfigError(f"chDB store {path}: {parent} is a file, not a directory: choose another --store path")
        if parent is not None and (not os.access(parent, os.W_OK | os.X_OK) or str(parent).startswith("/proc")):
            raise ConfigError(f"chDB store {path}: cannot create it under {parent} (not writable): choose another path")
        return f"{path} (new)"
    status = path / "status"
    if status.is_file():
        try:
            fd = os.open(status, os.O_RDONLY)
        except OSError as err:
            raise ConfigError(f"chDB store {path}: cannot read {status}: {err.strerror}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            owner = os.read(fd, 200).decode("utf-8", "replace").splitlines()
            pid = next((ln.split(":", 1)[1].strip() for ln in owner if ln.startswith("PID:")), "another process")
            raise UnavailableError(
                f"chDB store {path} is in use by process {pid}: chDB allows one process per store; stop that "
                "process (or wait for it to end), or use a ClickHouse server (--store http://HOST:8123/DB)"
            ) from None
        finally:
            os.close(fd)
    if not os.access(path, os.W_OK):
        raise ConfigError(f"chDB store {path} is not writable by this user")
    return str(path)


def open_checked(s: Settings, *, must_exist: bool = False) -> Store:
    """The store of ``s``, opened; every way it can fail is one line (config 3 or unavailable 4)."""
    if s.store.startswith("chdb://"):
        check_chdb_path(chdb_path(s.store), must_exist=must_exist)
    try:
        return open_store(
            s.store, user=s.store_user, password=s.store_password.get_secret_value(), ca_file=s.store_ca_file
        )
    except StoreError as err:
        where = store_label(s.store)
        if s.store.startswith("chdb://"):
            raise ConfigError(f"cannot open chDB store {where}: {root_reason(err)}") from err
        parts = urlsplit(s.store)
        reason = root_reason(err)
        if "authentication" in reason.lower() or "password" in reason.lower() or "(516" in str(err):
            raise ConfigError(
                f"store {where} refused the credentials: check LIFECYCLE_STORE_USER / LIFECYCLE_STORE_PASSWORD"
            ) from err
        raise UnavailableError(
            f"cannot reach the store {where} ({reason}): is the ClickHouse server at {parts.hostname}:{parts.port} "
            "up, and --store (LIFECYCLE_STORE) right?"
        ) from err


def require_events(events_in: int, rejected: Mapping[str, int], where: str) -> None:
    """Every line rejected is a data error (exit 5) naming the reasons; the caller warns on an empty input."""
    n_rej = sum(rejected.values())
    if events_in and n_rej >= events_in:
        reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(rejected.items(), key=lambda kv: -kv[1]))
        raise DataError(
            f"all {events_in:,} input lines of {where} were rejected ({reasons}): is it an events file "
            "(docs/events.md)? The dead letters are in rejected_events"
        )
