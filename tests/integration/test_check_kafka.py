"""``lifecycle check`` against a real broker: the input and output topics with their partition counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.broker import TansuBroker
from pipelines.cli.errors import EXIT_CONFIG

pytestmark = pytest.mark.integration


def test_check_lists_the_kafka_topics_with_their_partitions_and_fails_a_missing_one(
    kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    events = kafka_broker.create_topic(partitions=3)
    dlq = kafka_broker.create_topic(partitions=1)
    base = [sys.executable, "-m", "pipelines.cli.main", "check", "--store", f"chdb://{tmp_path / 's.chdb'}",
            "--metrics-port", "0"]  # fmt: skip
    env_ok = {"LIFECYCLE_DEAD_LETTER_TOPIC": f"kafka://{kafka_broker.bootstrap}/{dlq}"}
    ok = subprocess.run([*base, "--input", f"kafka://{kafka_broker.bootstrap}/{events}"], capture_output=True,
                        text=True, timeout=120, env={**os.environ, **env_ok})  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    flat = " ".join(ok.stdout.split())
    assert f"topic {events}: 3 partition(s)" in flat and f"topic {dlq}: 1 partition(s)" in flat
    missing = subprocess.run([*base, "--input", f"kafka://{kafka_broker.bootstrap}/no-such-topic"],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert missing.returncode == EXIT_CONFIG
    assert "topic 'no-such-topic' does not exist" in " ".join(missing.stdout.split())
