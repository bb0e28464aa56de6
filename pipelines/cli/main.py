"""The ``lifecycle`` command line: the parser, and one module per command group.

Exit codes: 0 ok, 2 usage or configuration error, 1 runtime failure, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from pipelines.cli import db, model, query, rescore, run, simulate
from pipelines.flow.runner import StateError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lifecycle", description="Real-time user-lifecycle scoring.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)
    for group in (run, simulate, model, db, rescore, query):
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        # While the store is down, the HTTP client libraries warn on every failed attempt; the sink logs one
        # line when the outage starts and one when it ends (pipelines/io/store/retry.py), which is what operators need.
        for noisy in ("urllib3", "clickhouse_connect"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return int(args.func(args))
    except ValidationError as err:
        print(f"lifecycle: configuration error:\n{err}", file=sys.stderr)
        return 2
    except StateError as err:
        print(f"lifecycle: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"lifecycle: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
