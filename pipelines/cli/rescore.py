"""``lifecycle rescore``: every user in the store, scored again with a new model (see :mod:`pipelines.offline.rescore`).

:func:`register` adds the subcommand to the ``lifecycle`` parser and sets
``func`` (a function of the parsed args returning the exit code). The store
URL and credentials, the taxonomy and torch threads come from the same
``LIFECYCLE_*`` settings as ``lifecycle run``. Exit codes: 0 ok, 2 bad input
(missing file, empty history, incompatible model), 1 other failures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from models.artifact import ArtifactError
from pipelines.cli.errors import EXIT_CONFIG, classify
from pipelines.cli.format import duration, instant
from pipelines.cli.preflight import open_checked, store_label
from pipelines.contract.time import as_of_ms
from pipelines.core.rules import RuleError
from pipelines.io.store.migrations import migrate
from pipelines.offline.history import load_history
from pipelines.offline.rescore import rescore
from pipelines.scoring.scorer import Scorer
from pipelines.settings import Settings

log = logging.getLogger("lifecycle")


def register(sub: Any) -> None:
    """Add ``rescore`` to an ``argparse`` subparsers object."""
    p = sub.add_parser(
        "rescore",
        help="score every user in the store with a new model, from the event history (backfill)",
        description=(
            "Replays the event history through the streaming feature code up to --as-of, scores every user of "
            "user_scores with --model in large batches and writes rows that supersede the old ones "
            "(version = as-of + 1 ms; docs/scoring.md)."
        ),
    )
    p.add_argument(
        "--events", type=Path, nargs="+", required=True, help="history file(s): .jsonl[.gz], .csv[.gz] or .parquet"
    )
    p.add_argument("--model", type=Path, required=True, help="the new model's artifact directory")
    p.add_argument(
        "--as-of",
        default=None,
        help="YYYY-MM-DD (end of day, UTC+8), ISO-8601 instant with offset, or epoch ms "
        "(default: the newer of the newest event and the store's clock)",
    )
    p.add_argument("--store", default=None, help="store URL [env: LIFECYCLE_STORE]")
    p.add_argument(
        "--taxonomy",
        default=None,
        help="label stages, tiers and at-risk with this taxonomy (shipped name or YAML) [env: LIFECYCLE_TAXONOMY]",
    )
    p.add_argument("--device", default=None, help="torch device: auto | cpu | cuda[:N] [env: LIFECYCLE_DEVICE]")
    p.add_argument(
        "--batch-rows",
        type=int,
        default=None,
        help="rows per model micro-batch (default: per device, 4096 CPU, 65536 CUDA)",
    )
    p.add_argument("--page-rows", type=int, default=100_000, help="users read from the store and written per page")
    p.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto", help="CUDA precision (default: auto)"
    )
    p.set_defaults(func=cmd_rescore)


def parse_as_of(text: str) -> int:
    """``YYYY-MM-DD`` (end of that day, UTC+8), an ISO-8601 instant with an offset, or epoch ms."""

    s = text.strip()
    if s.isdigit():
        return int(s)
    if len(s) == 10:
        return as_of_ms(s)
    t = dt.datetime.fromisoformat(s)
    if t.tzinfo is None:
        raise ValueError(f"--as-of {text!r}: give a UTC offset (e.g. +08:00) or a date")
    return int(t.timestamp() * 1000)


def cmd_rescore(args: argparse.Namespace) -> int:

    over = {k: v for k, v in {"store": args.store, "device": args.device, "taxonomy": args.taxonomy}.items() if v}
    s = Settings(**over)
    try:
        taxonomy = s.load_taxonomy()
    except RuleError as err:
        print(f"lifecycle rescore: {classify(err)}", file=sys.stderr)
        return EXIT_CONFIG
    if s.torch_threads:
        torch.set_num_threads(s.torch_threads)
    try:
        as_of = parse_as_of(args.as_of) if args.as_of else None
        scorer = Scorer.from_dir(args.model, device=s.device, max_batch_rows=args.batch_rows, precision=args.precision)
        events = load_history(args.events).events
    except (ArtifactError, FileNotFoundError, ValueError) as err:
        print(f"lifecycle rescore: {classify(err)}", file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"rescore: {len(events):,} events, model {scorer.model_version} on {scorer.device}, "
        f"taxonomy {taxonomy.name}@{taxonomy.version}, store {store_label(s.store)}"
    )
    store = open_checked(s)
    migrate(store, s.sql_dir)
    try:
        res = rescore(store, scorer, events, as_of_ms=as_of, taxonomy=taxonomy, page_rows=args.page_rows)
    except ValueError as err:
        print(f"lifecycle rescore: {classify(err)}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        store.close()
    print(
        f"rescored {res.rescored:,} of {res.users_in_store:,} users with {res.model_version} as of "
        f"{instant(res.as_of_ms)} (version {res.version}) in {duration(res.seconds)}; left as they were: "
        f"{res.missing:,} without events in the history, {res.newer_in_store:,} newer in the store, "
        f"{res.opted_out:,} opted out"
    )
    return 0
