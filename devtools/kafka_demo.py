"""``make demo KAFKA=1``: the demo through a local Kafka-protocol broker, end to end.

``python -m devtools.kafka_demo demo`` starts tansu, produces the simulated stream to topic
``lifecycle-events``, runs the pipeline on it through the composition root
(:func:`pipelines.flow.runner.run_pipeline`, as ``lifecycle run`` does) until every partition is
caught up, prints the summary and the dead-letter/transitions topic counts, and stops the broker
whatever happens. ``python -m devtools.kafka_demo broker`` runs a local broker until Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from rich.console import Console

from devtools.broker import start_local_broker
from pipelines.cli.summary import print_summary
from pipelines.flow.runner import open_migrated_store, run_pipeline
from pipelines.io.kafka.admin import count_records, ensure_topic
from pipelines.offline.simulate_io import simulate_to_kafka
from pipelines.settings import Settings

#: The demo's flow outputs: dead letters and stage transitions, each to its own topic.
DEMO_OUTPUTS = (("dead_letter_topic", "lifecycle-dead-letters"), ("transitions_topic", "lifecycle-transitions"))


def run_kafka_demo(
    *,
    users: int,
    days: int,
    seed: int = 7,
    store: str = "chdb://./data/lifecycle.chdb",
    partitions: int = 2,
) -> int:
    """Run the demo (module docstring); returns 0, or raises what the pipeline raised."""
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
        outputs: dict[str, str] = {}
        for field, topic in DEMO_OUTPUTS:
            ensure_topic(bootstrap, topic, 1)
            outputs[field] = f"kafka://{bootstrap}/{topic}"
        settings = Settings(
            input=events_url,
            store=store,
            kafka_eof_exit=True,
            dead_letter_topic=outputs["dead_letter_topic"],
            transitions_topic=outputs["transitions_topic"],
        )
        result = run_pipeline(settings, rebuild_state=True)  # a demo: start over whatever ran before
        console = Console()
        db = open_migrated_store(settings)
        try:
            print_summary(console, db, result, settings.store)
        finally:
            db.close()
        for (_, topic), url in zip(DEMO_OUTPUTS, outputs.values(), strict=True):
            print(f"{url}: {count_records(bootstrap, topic):,} records", flush=True)
        return 0
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
    """``python -m devtools.kafka_demo {demo,broker}``."""
    p = argparse.ArgumentParser(prog="python -m devtools.kafka_demo", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="the demo through a local broker (make demo KAFKA=1)")
    demo.add_argument("--users", type=int, default=50_000)
    demo.add_argument("--days", type=int, default=30)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--partitions", type=int, default=2)
    demo.add_argument("--store", default="chdb://./data/lifecycle.chdb")
    sub.add_parser("broker", help="run a local broker until Ctrl-C")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM (make interrupted, CI timeout): unwind through the finally blocks that stop the broker.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.cmd == "broker":
        return _serve_broker()
    return run_kafka_demo(
        users=args.users, days=args.days, seed=args.seed, store=args.store, partitions=args.partitions
    )


if __name__ == "__main__":
    sys.exit(main())
