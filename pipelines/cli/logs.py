"""Logging of the command line: human lines on stderr (rich, beside a progress bar) or JSON lines.

Every log line goes to stderr, so stdout carries only a command's result (a query's rows, a
summary) and stays fit for pipes. ``human`` renders through one shared rich console, the same one
the progress bar draws on, so a log line prints above the bar instead of through it. ``json``
writes one object per line (``ts``, ``level``, ``logger``, ``msg``) for log collectors.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from rich.console import Console
from rich.logging import RichHandler

#: The console of stderr: log lines and the progress bar share it (rich keeps the bar below the logs).
STDERR = Console(stderr=True)

#: Libraries that log a line per failed attempt of something the project reports once itself.
_NOISY = ("urllib3", "clickhouse_connect")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO-8601), ``level``, ``logger``, ``msg`` (and ``exc``)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(*, debug: bool, fmt: str) -> None:
    """Route every logger to stderr, as rich text (``fmt="human"``) or JSON lines (``fmt="json"``)."""
    handler: logging.Handler
    if fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif not STDERR.is_terminal:  # a file or a pipe: one plain line per record, never wrapped
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler = RichHandler(
            console=STDERR, show_path=debug, rich_tracebacks=False, log_time_format="%H:%M:%S", markup=False
        )
        handler.setFormatter(logging.Formatter("%(message)s" if not debug else "%(name)s: %(message)s"))
    if not debug:
        handler.addFilter(_quiet_libraries)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def _quiet_libraries(record: logging.LogRecord) -> bool:
    """Drop the HTTP client libraries' lines below ERROR (a filter: they set their own levels on import).

    While the store is down they warn on every failed attempt; the sink logs one line when the outage
    starts and one when it ends (pipelines/io/store/retry.py), and the CLI one line when it gives up.
    """
    return record.levelno >= logging.ERROR or not record.name.startswith(_NOISY)
