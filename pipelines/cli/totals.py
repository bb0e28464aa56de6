"""Counters over every run into one pipeline state: a resumed run's line says its own and the total.

A run's counters (:class:`~pipelines.flow.runner.RunResult`) cover what that process read. When a
run resumes from the state of earlier ones, the operator also wants the sum: ``run-totals.json``
beside the recovery partitions (``PATH.state/``) adds each run that ended or drained. It lives and
dies with the state: ``--rebuild-state`` or a removed state directory starts it over. A run killed
without a drain (``kill -9``, a second signal) adds nothing; its events after the last committed
epoch are read again by the next run and counted there, those before it are missing from the sum,
which the line says (``runs`` counts only the ones that were added).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipelines.flow.runner import RunResult

TOTALS_FILE = "run-totals.json"
_COUNTERS = ("events_in", "events_applied", "duplicates", "opted_out")


def add_run(state: Path | None, result: RunResult) -> dict[str, Any] | None:
    """Add ``result`` to the totals of ``state`` and return them (None without a persisted state)."""
    if state is None or not state.is_dir():
        return None
    path = state / TOTALS_FILE
    try:
        totals: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        totals = {}  # an unreadable file is started over rather than failing the run that just ended
    totals["runs"] = int(totals.get("runs", 0)) + 1
    for key in _COUNTERS:
        totals[key] = int(totals.get(key, 0)) + int(getattr(result, key))
    for key in ("rejected", "rows_written"):
        merged = dict(totals.get(key, {}))
        for k, v in getattr(result, key).items():
            merged[k] = int(merged.get(k, 0)) + int(v)
        totals[key] = merged
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(totals, sort_keys=True) + "\n")
    os.replace(tmp, path)  # atomic: a crash leaves the old totals or the new ones
    return totals


def totals_line(totals: dict[str, Any]) -> str:
    """``Over 3 runs into this state: 340,360 events read, ...`` (empty for the first run)."""
    if int(totals.get("runs", 0)) < 2:
        return ""
    rejected = sum(int(v) for v in totals.get("rejected", {}).values())
    rows = sum(int(v) for v in totals.get("rows_written", {}).values())
    return (
        f"Over {totals['runs']} runs into this state: {totals['events_in']:,} events read, "
        f"{totals['events_applied']:,} applied, {totals['duplicates']:,} duplicates, "
        f"{totals['opted_out']:,} opted out, {rejected:,} rejected; {rows:,} rows written."
    )
