"""Event time: the units, the "never" sentinel, the operating calendar and the clock type.

Every module that reasons about time imports these from here, so that a day, a
missing timestamp and the brands' calendar (days start at midnight UTC+8) mean
the same thing in the stream, in training and in batch scoring.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
#: "no such event yet": far from int64 overflow, so ``now - NEVER`` stays finite and huge.
NEVER = int(np.iinfo(np.int64).min // 4)
#: The brands' operating calendar: days start at midnight UTC+8.
OPERATING_TZ = dt.timezone(dt.timedelta(hours=8))
DAY_OFFSET_MS = 8 * HOUR_MS
#: 2000-01-01T00:00:00Z: earlier epoch-ms values are bad data (a unit mistake, a zero default).
MIN_EPOCH_MS = 946_684_800_000

#: Wall-clock seconds since the epoch (``time.time``); injected so tests control it.
Clock = Callable[[], float]


def day_index(ts_ms: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Operating-calendar day number of each timestamp."""
    return (ts_ms + DAY_OFFSET_MS) // DAY_MS


def as_of_ms(day: str | dt.date) -> int:
    """``YYYY-MM-DD`` -> epoch ms of the *end* of that day in UTC+8 (the operating calendar).

    Events at or before this instant are "up to the as-of date"; later ones are its future.
    """
    d = dt.date.fromisoformat(day) if isinstance(day, str) else day
    return int(dt.datetime.combine(d + dt.timedelta(days=1), dt.time(), OPERATING_TZ).timestamp() * 1000)


def day_start_ms(day: dt.date) -> int:
    """Epoch ms of the *start* of ``day`` in the operating calendar."""
    return int(dt.datetime.combine(day, dt.time(0), tzinfo=OPERATING_TZ).timestamp() * 1000)


def ms_to_iso(ms: int) -> str:
    """Epoch ms as an ISO-8601 instant in UTC+8."""
    return dt.datetime.fromtimestamp(ms / 1000, OPERATING_TZ).isoformat(timespec="seconds")


def ms_to_day(ms: int) -> str:
    """The as-of date whose end is ``ms`` (inverse of :func:`as_of_ms` for day ends)."""
    return (dt.datetime.fromtimestamp((ms - 1) / 1000, OPERATING_TZ)).date().isoformat()
