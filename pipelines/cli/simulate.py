"""``lifecycle simulate``: a simulated event stream (NDJSON file or Kafka topic) and its ground truth."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import simulate_to_kafka, write_jsonl, write_truth_csv
from pipelines.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``simulate`` to the ``lifecycle`` subcommands."""
    sim = sub.add_parser("simulate", help="write a simulated event stream (NDJSON) and its ground truth")
    sim.add_argument("--users", type=int, default=50_000, help="simulated users")
    sim.add_argument("--days", type=int, default=30, help="simulated days of events")
    sim.add_argument("--seed", type=int, default=7, help="random seed (the same seed writes the same events)")
    sim.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2026, 10, 1), help="YYYY-MM-DD")
    sim.add_argument("--horizon-days", type=int, default=30, help="days simulated for ground-truth labels")
    sim.add_argument("--out", required=True, help="events file (.jsonl or .jsonl.gz) or kafka://HOST:PORT/TOPIC")
    sim.add_argument(
        "--partitions", type=int, default=None, help="partitions of a kafka:// topic created by this run (default 1)"
    )
    sim.add_argument("--truth", type=Path, help="ground-truth CSV (default: OUT with .truth.csv)")

    sim.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> int:

    if args.out.startswith("kafka://"):
        config = {k: v.get_secret_value() for k, v in Settings().kafka_config.items()}  # LIFECYCLE_KAFKA_CONFIG
        n = simulate_to_kafka(
            args.out,
            users=args.users,
            days=args.days,
            seed=args.seed,
            partitions=args.partitions,
            config=config,
            start=args.start,
            horizon_days=args.horizon_days,
            truth_path=args.truth,
        )
        truth = f" and wrote ground truth to {args.truth}" if args.truth else ""
        print(f"produced {n:,} events to {args.out}{truth}")
        return 0
    args.out = Path(args.out)
    res = simulate(
        SimConfig(users=args.users, days=args.days, seed=args.seed, start=args.start, horizon_days=args.horizon_days)
    )
    n = write_jsonl(res.events, args.out)
    truth = args.truth or args.out.with_name(args.out.name.split(".")[0] + ".truth.csv")
    write_truth_csv(res.truth, truth)
    print(f"wrote {n:,} events to {args.out} and ground truth for {res.truth.height:,} users to {truth}")
    return 0
