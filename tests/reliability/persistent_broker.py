"""A tansu broker with persistent storage that can be killed and restarted on the same address.

DESIGN.md section 4: ``--storage-engine s3://BUCKET/`` keeps the log in object
storage; the object store here is :class:`tests.reliability.fake_s3.FakeS3`, which
lives in the test process and so outlives every broker process. A restarted broker
on the same port serves every record produced before the outage, and clients that
were connected reconnect by themselves.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import TracebackType

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from devtools.broker import BrokerError, tansu_binary
from tests.reliability.fake_s3 import FakeS3
from tests.reliability.harness import free_port


class PersistentBroker:
    """``tansu broker --storage-engine s3://tansu/`` on a fixed loopback port; ``kill()`` / ``start()`` at will."""

    def __init__(self, s3: FakeS3, log_path: Path, *, bucket: str = "tansu") -> None:
        self.s3 = s3
        self.bucket = bucket
        self.port = free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> PersistentBroker:
        """Start (or restart) the broker and wait until it answers metadata requests."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        url = f"tcp://{self.bootstrap}"
        cmd = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]
        cmd += ["--storage-engine", f"s3://{self.bucket}/"]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.s3.env()}
            )
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with {self._proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                admin.list_topics(timeout=0.5)
                return self
            except KafkaException:
                if time.monotonic() > deadline:
                    raise BrokerError(f"tansu did not answer on {self.bootstrap} within {timeout_s}s") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: an abrupt outage (tansu's SIGTERM waits for its clients to leave)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def create_topic(self, name: str, partitions: int = 1, timeout_s: float = 10.0) -> str:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            meta = admin.list_topics(timeout=timeout_s).topics.get(name)
            if meta is not None and meta.error is None and len(meta.partitions) == partitions:
                return name
            if time.monotonic() > deadline:
                raise BrokerError(f"topic {name!r} has no {partitions} partitions after {timeout_s}s")
            time.sleep(0.05)

    def __enter__(self) -> PersistentBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()
