"""Numbers and times as an operator reads them: ``1,157 events``, ``2.5 s``, ``2026-11-01 00:00 UTC``, ``0.002``."""

from __future__ import annotations

from datetime import UTC, datetime


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 event``, ``1,157 events`` (``plural`` for irregular nouns)."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def duration(seconds: float) -> str:
    """``0.4 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def number(x: float, digits: int = 4) -> str:
    """A float with ``digits`` significant digits and no binary noise: ``0.002``, ``12.35``, ``1,234,567``."""
    if x != x or x in (float("inf"), float("-inf")):
        return str(x)
    if abs(x) >= 10**digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def instant(ms: int) -> str:
    """Epoch milliseconds as ``2026-11-01 00:00:00 UTC``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
