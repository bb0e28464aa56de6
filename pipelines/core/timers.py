"""Event-time timers over dense state rows, in O(rows due): rule thresholds and the refresh wheel.

Two uses, one wheel:

* **Rule timers** (:meth:`Timers.schedule`): every comparison of a ``days_since_*``
  (or ``tenure_days``) feature with a constant in the taxonomy's rules is a point in
  time at which a user's label may change without any new event. A user whose
  reference timestamp (``last_active_ts``, ``last_acquire_ts``, ...) is ``t`` is due
  at ``t + threshold`` for each such threshold.
* **Refresh** (:meth:`Timers.schedule_at`): every live user is re-evaluated at least
  once per refresh interval of event time: each evaluation schedules the next one
  interval later (:meth:`pipelines.core.shard.ShardProcessor._schedule_refresh`).

Due times are bucketed (default one hour; a bucket fires at its end, so a timer is
never early and at most one bucket late). Each bucket holds the rows scheduled into
it; when the shard clock passes a bucket, its rows are popped. A row touched again
later has a newer schedule in a later bucket, so stale entries are not searched for
and removed on every touch: they pop and are evaluated once more, which is harmless.
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
import numpy.typing as npt

from pipelines.contract.time import NEVER

_COMPACT_AT = 64  # merge a bucket's arrays (and drop repeats) once it holds this many

#: (state timestamp column, threshold ms): fire ``threshold`` after the column's time.
TimerSpec = tuple[str, int]


class Timers:
    """Bucketed timer wheel over dense state rows."""

    def __init__(self, specs: tuple[TimerSpec, ...] = (), bucket_ms: int = 3_600_000) -> None:
        if bucket_ms <= 0:
            raise ValueError(f"bucket_ms must be positive, got {bucket_ms}")
        self.specs = tuple((str(c), int(t)) for c, t in specs)
        self.bucket_ms = bucket_ms
        self._buckets: dict[int, list[npt.NDArray[np.int64]]] = {}
        self._heap: list[int] = []  # bucket ids, lazily deleted
        self._fired_through = np.iinfo(np.int64).min  # last bucket already popped

    def schedule(self, rows: npt.NDArray[np.int64], ts: dict[str, npt.NDArray[np.int64]]) -> None:
        """Schedule ``rows`` for every spec, from the state's timestamp columns ``ts`` (NEVER: no timer)."""
        if rows.shape[0] == 0:
            return
        for col, threshold in self.specs:
            at = ts[col][rows]
            known = at != NEVER
            self.schedule_at(rows[known], at[known] + threshold)

    def schedule_at(self, rows: npt.NDArray[np.int64], due_ms: npt.NDArray[np.int64]) -> None:
        """Schedule each of ``rows`` at its own due time (an entry per row)."""
        if rows.shape[0] == 0:
            return
        # ceil: the timer must not fire before its time
        due_bucket = -((-due_ms) // self.bucket_ms)
        order = np.argsort(due_bucket, kind="stable")
        b_sorted = due_bucket[order]
        cuts = np.flatnonzero(np.diff(b_sorted)) + 1
        for start, end in zip(np.r_[0, cuts], np.r_[cuts, b_sorted.shape[0]], strict=True):
            b = int(b_sorted[start])
            if b <= self._fired_through:
                continue  # already due: the caller evaluates these rows now anyway
            lst = self._buckets.get(b)
            if lst is None:
                lst = self._buckets[b] = []
                heapq.heappush(self._heap, b)
            lst.append(rows[order[start:end]])
            if len(lst) >= _COMPACT_AT:
                self._buckets[b] = [np.unique(np.concatenate(lst))]

    def next_due_ms(self) -> int | None:
        """When the earliest scheduled bucket fires (its end), or None when nothing is scheduled."""
        while self._heap and self._heap[0] not in self._buckets:
            heapq.heappop(self._heap)
        return self._heap[0] * self.bucket_ms if self._heap else None

    def pop_due(self, clock_ms: int) -> npt.NDArray[np.int64]:
        """Rows in every bucket that ends at or before ``clock_ms`` (unique, maybe stale)."""
        through = clock_ms // self.bucket_ms
        if through <= self._fired_through:
            return np.zeros(0, np.int64)
        self._fired_through = through
        parts: list[npt.NDArray[np.int64]] = []
        while self._heap and self._heap[0] <= through:
            b = heapq.heappop(self._heap)
            parts += self._buckets.pop(b, [])
        if not parts:
            return np.zeros(0, np.int64)
        return np.unique(np.concatenate(parts))

    def peek_due(self, clock_ms: int) -> npt.NDArray[np.int64]:
        """What :meth:`pop_due` would return, leaving every timer in place (a provisional look at a tick)."""
        through = clock_ms // self.bucket_ms
        if through <= self._fired_through:
            return np.zeros(0, np.int64)
        parts = [a for b, lst in self._buckets.items() if b <= through for a in lst]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def pending(self) -> int:
        """Scheduled entries (an upper bound on rows with a pending timer)."""
        return sum(a.shape[0] for lst in self._buckets.values() for a in lst)

    def snapshot(self) -> dict[str, Any]:
        return {
            "specs": self.specs,
            "bucket_ms": self.bucket_ms,
            "fired_through": self._fired_through,
            "buckets": {b: np.concatenate(lst) for b, lst in self._buckets.items()},
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> Timers:
        specs = tuple((str(c), int(ms)) for c, ms in snap.get("specs", ()))
        t = cls(specs, int(snap["bucket_ms"]))
        t._fired_through = int(snap["fired_through"])
        t._buckets = {int(b): [a] for b, a in snap["buckets"].items()}
        t._heap = sorted(t._buckets)
        return t
