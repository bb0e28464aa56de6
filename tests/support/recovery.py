"""Reading a Bytewax recovery store from tests: how far a running pipeline has committed."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def committed_epoch(recovery: Path) -> int:
    """Newest epoch the Bytewax recovery store committed (0 before the first)."""
    best = 0
    for part in recovery.glob("part-*.sqlite3"):
        try:
            with sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=1) as db:
                row = db.execute("SELECT max(commit_epoch) FROM commits").fetchone()
        except sqlite3.Error:
            continue
        best = max(best, int(row[0] or 0))
    return best
