"""Silence timers: find users whose silence crossed a stage threshold, in O(users due).

A user touched at event time ``t`` becomes due at ``t + threshold`` for each
threshold (dormant, churned). Due times are bucketed (default one hour); each
bucket holds the rows scheduled into it. When the shard clock passes a bucket,
its rows are popped and kept only if they are still silent: a row touched again
later has a newer schedule in a later bucket, so stale entries are discarded
lazily instead of being searched for and removed on every touch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

_COMPACT_AT = 64  # merge a bucket's arrays (and drop repeats) once it holds this many


class SilenceTimers:
    """Bucketed timer wheel over dense state rows, one wheel per threshold."""

    def __init__(self, thresholds_ms: tuple[int, ...], bucket_ms: int = 3_600_000) -> None:
        if bucket_ms <= 0:
            raise ValueError(f"bucket_ms must be positive, got {bucket_ms}")
        self.thresholds_ms = thresholds_ms
        self.bucket_ms = bucket_ms
        self._buckets: dict[int, list[npt.NDArray[np.int64]]] = {}
        self._fired_through = np.iinfo(np.int64).min  # last bucket already popped

    def schedule(self, rows: npt.NDArray[np.int64], last_active_ms: npt.NDArray[np.int64]) -> None:
        """Schedule ``rows`` (unique) for every threshold after their last activity."""
        if rows.shape[0] == 0:
            return
        for th in self.thresholds_ms:
            # ceil: the timer must not fire before the threshold is really crossed
            due_bucket = -((-(last_active_ms + th)) // self.bucket_ms)
            for b in np.unique(due_bucket):
                b = int(b)
                if b <= self._fired_through:
                    continue  # already due: caller re-scores these rows right now anyway
                lst = self._buckets.setdefault(b, [])
                lst.append(rows[due_bucket == b])
                if len(lst) >= _COMPACT_AT:
                    self._buckets[b] = [np.unique(np.concatenate(lst))]

    def pop_due(self, clock_ms: int) -> npt.NDArray[np.int64]:
        """Rows in every bucket that ends at or before ``clock_ms`` (unique, maybe stale)."""
        through = clock_ms // self.bucket_ms
        if through <= self._fired_through:
            return np.zeros(0, np.int64)
        due = [b for b in self._buckets if b <= through]
        self._fired_through = through
        if not due:
            return np.zeros(0, np.int64)
        parts = [a for b in sorted(due) for a in self._buckets.pop(b)]
        return np.unique(np.concatenate(parts))

    def pending(self) -> int:
        """Scheduled entries (an upper bound on users with a pending timer)."""
        return sum(a.shape[0] for lst in self._buckets.values() for a in lst)

    def snapshot(self) -> dict[str, Any]:
        return {
            "thresholds_ms": self.thresholds_ms,
            "bucket_ms": self.bucket_ms,
            "fired_through": self._fired_through,
            "buckets": {b: np.unique(np.concatenate(lst)) for b, lst in self._buckets.items()},
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> SilenceTimers:
        t = cls(tuple(snap["thresholds_ms"]), int(snap["bucket_ms"]))
        t._fired_through = int(snap["fired_through"])
        t._buckets = {int(b): [a] for b, a in snap["buckets"].items()}
        return t
