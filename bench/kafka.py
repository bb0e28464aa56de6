"""Kafka benchmarks against the local tansu broker (issue 7), JSON lines like ``bench.run``.

* ``kafka_produce_events_per_s``: simulator events produced to a topic (``produce_events``, the
  body of ``simulate_to_kafka`` / ``lifecycle simulate --out kafka://``), simulation not timed.
* ``kafka_consume_events_per_s``: ``KafkaBatchSource`` alone, partitions polled round-robin the
  way one Bytewax worker polls them, 1 and 2 partitions.
* ``kafka_e2e_events_per_s``: ``run_pipeline`` from the topic to scores in chDB (``kafka_eof_exit``),
  1 and 2 partitions. ``flow_seconds`` is the Bytewax run (flow start to last partition at its end).
* ``memory_e2e_events_per_s``: the same events and settings from memory (``IteratorSource``): the
  pipeline without Kafka, so the difference to ``kafka_e2e_events_per_s`` is what Kafka costs.

Each figure carries ``broker_cpu_cores`` (tansu's CPU seconds / wall seconds, from
``/proc/<pid>/stat``) and ``client_cpu_cores`` (this process, librdkafka threads included):
on a 2-core machine the broker's share is what the pipeline cannot have.

Sizes: BENCH_KAFKA_USERS (default 100,000), BENCH_KAFKA_DAYS (default 30), BENCH_KAFKA_BATCH (50,000).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from devtools.broker import TansuBroker
from pipelines.flow.runner import run_pipeline
from pipelines.io.files import IteratorSource
from pipelines.io.kafka.source import KafkaBatchSource
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import iter_ndjson_batches, produce_events
from pipelines.settings import Settings

_TICK = os.sysconf("SC_CLK_TCK")


def emit(name: str, value: float, unit: str, **extra: object) -> None:
    print(json.dumps({"name": name, "value": round(value, 3), "unit": unit, **extra}), flush=True)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class Measure:
    """Wall time, broker CPU and this process's CPU over a block."""

    def __init__(self, broker_pid: int) -> None:
        self.pid = broker_pid

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
        b0, c0, t0 = _cpu_s(self.pid), time.process_time(), time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t0
        broker, client = _cpu_s(self.pid) - b0, time.process_time() - c0
        return out, {
            "seconds": round(wall, 3),
            "broker_cpu_cores": round(broker / wall, 3),
            "client_cpu_cores": round(client / wall, 3),
        }


def _consume_all(source: KafkaBatchSource) -> int:
    """Every record of every partition, polled round-robin like one Bytewax worker polls its partitions."""
    parts = [source.build_part("bench", name, None) for name in source.list_parts()]
    awake = [0.0] * len(parts)
    live = list(range(len(parts)))
    n = 0
    try:
        while live:
            now = time.time()
            for i in list(live):
                if awake[i] > now:
                    continue
                try:
                    n += sum(len(b.payloads) for b in parts[i].next_batch())
                except StopIteration:
                    live.remove(i)
                    continue
                at = parts[i].next_awake()
                awake[i] = at.timestamp() if at is not None else 0.0
            if live and all(awake[i] > time.time() for i in live):
                time.sleep(max(0.0, min(awake[i] for i in live) - time.time()))
    finally:
        for p in parts:
            p.close()
    return n


def main() -> int:
    users = int(os.environ.get("BENCH_KAFKA_USERS", "100000"))
    days = int(os.environ.get("BENCH_KAFKA_DAYS", "30"))
    batch = int(os.environ.get("BENCH_KAFKA_BATCH", "50000"))
    torch.set_num_threads(1)
    events = simulate(SimConfig(users=users, days=days, seed=7)).events
    n = events.height
    tmp = Path(tempfile.mkdtemp(prefix="lifecycle-kafka-bench-"))
    try:
        with TansuBroker() as broker:
            measure = Measure(broker.pid)
            for partitions in (1, 2):
                topic = f"bench-events-{partitions}p"
                url = f"kafka://{broker.bootstrap}/{topic}"
                produced, m = measure(lambda url=url, p=partitions: produce_events(url, events, partitions=p))
                assert produced == n
                emit("kafka_produce_events_per_s", n / m["seconds"], "events/s", events=n, partitions=partitions, **m)

                source = KafkaBatchSource(broker.bootstrap, topic, batch_events=batch, eof_exit=True)
                consumed, m = measure(lambda s=source: _consume_all(s))
                assert consumed == n, (consumed, n)
                emit(
                    "kafka_consume_events_per_s",
                    n / m["seconds"],
                    "events/s",
                    events=n,
                    partitions=partitions,
                    batch_events=batch,
                    **m,
                )

                store = tmp / f"e2e-{partitions}.chdb"
                s = Settings(
                    input=url,
                    store=f"chdb://{store}",
                    kafka_eof_exit=True,
                    metrics_port=0,
                    batch_events=batch,
                )
                res, m = measure(lambda s=s: run_pipeline(s, registry=CollectorRegistry(), serve_metrics=False))
                assert res.events_in == n, (res.events_in, n)
                emit(
                    "kafka_e2e_events_per_s",
                    res.events_in / res.seconds,
                    "events/s",
                    events=res.events_in,
                    users=users,
                    days=days,
                    partitions=partitions,
                    shards=s.shards,
                    batch_events=batch,
                    store="chdb",
                    device="cpu",
                    rows_written=res.rows_written.get("user_scores", 0),
                    flow_seconds=round(res.seconds, 3),
                    **m,
                )

            # the same events and settings without Kafka (the broker idles meanwhile)
            s = Settings(store=f"chdb://{tmp}/memory.chdb", metrics_port=0, batch_events=batch)
            batches = list(iter_ndjson_batches(events, batch))
            mem_source = IteratorSource("memory", lambda: iter(batches))
            res, m = measure(
                lambda: run_pipeline(s, registry=CollectorRegistry(), serve_metrics=False, source=mem_source)
            )
            assert res.events_in == n, (res.events_in, n)
            emit(
                "memory_e2e_events_per_s",
                res.events_in / res.seconds,
                "events/s",
                events=res.events_in,
                users=users,
                days=days,
                shards=s.shards,
                batch_events=batch,
                store="chdb",
                device="cpu",
                flow_seconds=round(res.seconds, 3),
                **m,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
